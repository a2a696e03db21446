    -- GCRA. p_a: emission interval T, p_b: tolerance tau = T * burst, p_c: burst.
    -- State per rate: tat (0 = fresh).
    v_valid := v_found AND cardinality(v_state) = v_n;
    FOR i IN 1..v_n LOOP
        x_tat := CASE WHEN v_valid THEN v_state[i] ELSE 0 END;
        x_t := p_a[i];
        x_tau := p_b[i];
        v_old := v_old || x_tat;
        IF p_op = 2 THEN
            -- refund(n): if tat > now: tat = max(now, tat - n * T)
            IF x_tat > v_now THEN
                IF p_cost > (x_tat - v_now) / x_t THEN
                    x_tat := v_now;
                ELSE
                    x_tat := x_tat - p_cost * x_t;
                END IF;
            END IF;
            v_cand := v_cand || x_tat;
            CONTINUE;
        END IF;
        x_tat0 := greatest(x_tat, v_now);
        x_new_tat := x_tat0 + p_cost * x_t;
        va_limit[i] := p_c[i];
        va_reset_unch[i] := x_tat0 - v_now;
        IF x_new_tat <= v_now + x_tau THEN
            va_allowed[i] := true;
            va_remaining[i] := (v_now + x_tau - x_new_tat) / x_t;
            va_retry[i] := 0;
            va_reset[i] := x_new_tat - v_now;
            v_cand := v_cand || x_new_tat;
        ELSE
            va_allowed[i] := false;
            va_remaining[i] := greatest(0, v_now + x_tau - x_tat0) / x_t;
            va_retry[i] := x_new_tat - x_tau - v_now;
            va_reset[i] := x_tat0 - v_now;
            v_cand := v_cand || x_tat;
        END IF;
    END LOOP;
    v_settle := v_old;
-- @horizon
    -- horizon: max tat
    FOR i IN 1..v_n LOOP
        v_horizon := greatest(v_horizon, v_next[i]);
    END LOOP;
