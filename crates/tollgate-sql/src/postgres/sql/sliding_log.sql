    -- Sliding log (exact; every rate shares one log). p_a: limit L, p_b: window W.
    -- State: the log as pairs [ts1, weight1, ts2, weight2, ...], ts increasing.
    v_valid := v_found AND cardinality(v_state) % 2 = 0;
    IF v_valid THEN
        v_old := v_state;
    END IF;
    x_len := cardinality(v_old) / 2;
    x_wmax := 0;
    FOR i IN 1..v_n LOOP
        x_wmax := greatest(x_wmax, p_b[i]);
    END LOOP;
    -- time never runs backwards inside a log
    x_now := v_now;
    IF x_len > 0 THEN
        x_now := greatest(v_now, v_old[2 * x_len - 1]);
    END IF;
    -- the pruned log: drop entries with now - ts >= W_max
    FOR j IN 1..x_len LOOP
        IF x_now - v_old[2 * j - 1] < x_wmax THEN
            v_cand := v_cand || ARRAY[v_old[2 * j - 1], v_old[2 * j]];
        END IF;
    END LOOP;
    IF p_op = 2 THEN
        -- refund(n): remove n units of weight from the newest entries
        x_left := p_cost;
        WHILE x_left > 0 AND cardinality(v_cand) > 0 LOOP
            j := cardinality(v_cand);
            IF v_cand[j] > x_left THEN
                v_cand[j] := v_cand[j] - x_left;
                x_left := 0;
            ELSE
                x_left := x_left - v_cand[j];
                v_cand := v_cand[1:j - 2];
            END IF;
        END LOOP;
    ELSE
        FOR i IN 1..v_n LOOP
            x_l := p_a[i];
            x_w := p_b[i];
            x_cnt := 0;
            FOR j IN 1..x_len LOOP
                IF x_now - v_old[2 * j - 1] < x_w THEN
                    x_cnt := x_cnt + v_old[2 * j];
                END IF;
            END LOOP;
            x_ok := x_cnt + p_cost <= x_l;
            x_unch := CASE WHEN x_len > 0 AND x_cnt > 0
                           THEN v_old[2 * x_len - 1] + x_w - x_now ELSE 0 END;
            x_retry := 0;
            IF NOT x_ok THEN
                x_excess := x_cnt + p_cost - x_l;
                x_sum := 0;
                FOR j IN 1..x_len LOOP
                    IF x_now - v_old[2 * j - 1] < x_w THEN
                        x_sum := x_sum + v_old[2 * j];
                        IF x_sum >= x_excess THEN
                            x_retry := v_old[2 * j - 1] + x_w - x_now;
                            EXIT;
                        END IF;
                    END IF;
                END LOOP;
            END IF;
            va_allowed[i] := x_ok;
            va_limit[i] := x_l;
            va_remaining[i] := x_l - x_cnt - CASE WHEN x_ok THEN p_cost ELSE 0 END;
            va_retry[i] := x_retry;
            va_reset[i] := CASE WHEN x_ok THEN x_w ELSE x_unch END;
            va_reset_unch[i] := x_unch;
        END LOOP;
        -- the charged log: append (now, cost), merged with an entry at the same ts
        j := cardinality(v_cand);
        IF j > 0 AND v_cand[j - 1] = x_now THEN
            v_cand[j] := v_cand[j] + p_cost;
        ELSE
            v_cand := v_cand || ARRAY[x_now, p_cost];
        END IF;
    END IF;
    v_settle := v_old;
-- @horizon
    -- horizon: newest ts + W_max
    IF cardinality(v_next) >= 2 THEN
        v_horizon := v_next[cardinality(v_next) - 1] + x_wmax;
    END IF;
