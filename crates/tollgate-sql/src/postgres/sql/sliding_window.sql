    -- Sliding-window counter. p_a: limit L, p_b: window W.
    -- State per rate: [window_start, prev, curr].
    v_valid := v_found AND cardinality(v_state) = 3 * v_n;
    FOR i IN 1..v_n LOOP
        x_l := p_a[i];
        x_w := p_b[i];
        IF v_valid THEN
            x_s_ws := v_state[3 * i - 2];
            x_s_prev := v_state[3 * i - 1];
            x_s_curr := v_state[3 * i];
        ELSE
            x_s_ws := 0;
            x_s_prev := 0;
            x_s_curr := 0;
        END IF;
        v_old := v_old || ARRAY[x_s_ws, x_s_prev, x_s_curr];
        -- roll
        x_now := greatest(v_now, x_s_ws);
        x_ws := x_now - x_now % x_w;
        IF x_s_ws = x_ws THEN
            x_prev := x_s_prev;
            x_curr := x_s_curr;
        ELSIF x_s_ws + x_w = x_ws THEN
            x_prev := x_s_curr;
            x_curr := 0;
        ELSE
            x_prev := 0;
            x_curr := 0;
        END IF;
        IF p_op = 2 THEN
            -- refund(n): curr = max(0, curr - n), on the rolled state
            v_cand := v_cand || ARRAY[x_ws, x_prev, greatest(0, x_curr - p_cost)];
            CONTINUE;
        END IF;
        x_e := x_now - x_ws;
        -- The scaled products reach L * W (~3e22 for 10^9 per 365 days): numeric, exact.
        x_weighted := x_prev::numeric * (x_w - x_e);
        x_ok := x_weighted + (x_curr + p_cost)::numeric * x_w <= x_l::numeric * x_w;
        x_curr_after := CASE WHEN x_ok THEN x_curr + p_cost ELSE x_curr END;
        va_allowed[i] := x_ok;
        va_limit[i] := x_l;
        va_remaining[i] := div(greatest(0, x_l::numeric * x_w - (x_weighted + x_curr_after::numeric * x_w)), x_w);
        IF x_ok THEN
            va_retry[i] := 0;
        ELSE
            -- wait(): the earliest time the same cost fits
            x_wait := NULL;
            IF x_l >= x_curr + p_cost AND x_prev > 0 THEN
                x_room := x_l - x_curr - p_cost;
                x_e_min := x_w - least(x_w, div(x_room::numeric * x_w, x_prev));
                IF x_e_min < x_w THEN
                    x_wait := x_e_min - x_e;
                END IF;
            END IF;
            IF x_wait IS NULL THEN
                IF x_curr = 0 THEN
                    x_wait := x_w - x_e;
                ELSE
                    x_e2 := x_w - least(x_w, div((x_l - p_cost)::numeric * x_w, x_curr));
                    IF x_e2 < x_w THEN
                        x_wait := (x_w - x_e) + x_e2;
                    ELSE
                        x_wait := (x_w - x_e) + x_w;
                    END IF;
                END IF;
            END IF;
            va_retry[i] := x_wait;
        END IF;
        va_reset[i] := CASE WHEN x_curr_after > 0 THEN (x_w - x_e) + x_w
                            WHEN x_prev > 0 THEN x_w - x_e ELSE 0 END;
        va_reset_unch[i] := CASE WHEN x_curr > 0 THEN (x_w - x_e) + x_w
                                 WHEN x_prev > 0 THEN x_w - x_e ELSE 0 END;
        v_cand := v_cand || ARRAY[x_ws, x_prev, x_curr_after];
    END LOOP;
    v_settle := v_old;
-- @horizon
    -- horizon: window_start + 2W if curr > 0, window_start + W if prev > 0, else 0
    FOR i IN 1..v_n LOOP
        IF v_next[3 * i] > 0 THEN
            v_horizon := greatest(v_horizon, v_next[3 * i - 2] + 2 * p_b[i]);
        ELSIF v_next[3 * i - 1] > 0 THEN
            v_horizon := greatest(v_horizon, v_next[3 * i - 2] + p_b[i]);
        END IF;
    END LOOP;
