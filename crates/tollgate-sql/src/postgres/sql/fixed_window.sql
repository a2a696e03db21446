    -- Fixed clock-aligned window. p_a: limit L, p_b: window W.
    -- State per rate: [window_start, count].
    v_valid := v_found AND cardinality(v_state) = 2 * v_n;
    FOR i IN 1..v_n LOOP
        x_l := p_a[i];
        x_w := p_b[i];
        IF v_valid THEN
            x_s_ws := v_state[2 * i - 1];
            x_s_count := v_state[2 * i];
        ELSE
            x_s_ws := 0;
            x_s_count := 0;
        END IF;
        v_old := v_old || ARRAY[x_s_ws, x_s_count];
        x_now := greatest(v_now, x_s_ws);
        x_ws := x_now - x_now % x_w;
        IF p_op = 2 THEN
            -- refund(n): count = max(0, count - n), in the current window only
            IF x_s_ws = x_ws THEN
                v_cand := v_cand || ARRAY[x_ws, greatest(0, x_s_count - p_cost)];
            ELSE
                v_cand := v_cand || ARRAY[x_s_ws, x_s_count];
            END IF;
            CONTINUE;
        END IF;
        x_cnt := CASE WHEN x_s_ws = x_ws THEN x_s_count ELSE 0 END;
        x_until_end := x_ws + x_w - x_now;
        x_ok := x_cnt + p_cost <= x_l;
        x_cnt_after := CASE WHEN x_ok THEN x_cnt + p_cost ELSE x_cnt END;
        va_allowed[i] := x_ok;
        va_limit[i] := x_l;
        va_remaining[i] := x_l - x_cnt_after;
        va_retry[i] := CASE WHEN x_ok THEN 0 ELSE x_until_end END;
        va_reset[i] := CASE WHEN x_cnt_after > 0 THEN x_until_end ELSE 0 END;
        va_reset_unch[i] := CASE WHEN x_cnt > 0 THEN x_until_end ELSE 0 END;
        v_cand := v_cand || ARRAY[x_ws, x_cnt_after];
    END LOOP;
    v_settle := v_old;
-- @horizon
    -- horizon: window_start + W
    FOR i IN 1..v_n LOOP
        v_horizon := greatest(v_horizon, v_next[2 * i - 1] + p_b[i]);
    END LOOP;
