    -- Token bucket (interval refill). p_a: capacity C, p_b: refill amount R,
    -- p_c: refill interval I, p_d: initial tokens T0.
    -- State per rate: [present (0/1), tokens, last].
    v_valid := v_found AND cardinality(v_state) = 3 * v_n;
    FOR i IN 1..v_n LOOP
        x_cap := p_a[i];
        x_rate := p_b[i];
        x_int := p_c[i];
        IF v_valid AND v_state[3 * i - 2] <> 0 THEN
            x_present := true;
            x_tokens := v_state[3 * i - 1];
            x_last := v_state[3 * i];
        ELSE
            x_present := false;
            x_tokens := 0;
            x_last := 0;
        END IF;
        v_old := v_old || ARRAY[CASE WHEN x_present THEN 1 ELSE 0 END, x_tokens, x_last]::bigint[];
        -- refill (part of every operation)
        x_now := CASE WHEN x_present THEN greatest(v_now, x_last) ELSE v_now END;
        IF NOT x_present THEN
            x_r_tokens := p_d[i];
            x_r_last := x_now;
        ELSIF x_now > x_last THEN
            x_k := (x_now - x_last) / x_int;
            x_r_tokens := x_tokens + x_k * x_rate;
            x_r_last := x_last + x_k * x_int;
        ELSE
            x_r_tokens := x_tokens;
            x_r_last := x_last;
        END IF;
        IF x_r_tokens >= x_cap THEN
            x_r_tokens := x_cap;
            x_r_last := x_now;
        END IF;
        -- a check that charges nothing still persists the refill
        v_settle := v_settle || ARRAY[1, x_r_tokens, x_r_last]::bigint[];
        IF p_op = 2 THEN
            -- refund(n): after refill, tokens = min(C, tokens + n)
            v_cand := v_cand || ARRAY[1,
                CASE WHEN p_cost >= x_cap - x_r_tokens THEN x_cap ELSE x_r_tokens + p_cost END,
                x_r_last]::bigint[];
            CONTINUE;
        END IF;
        va_limit[i] := x_cap;
        va_reset_unch[i] := CASE WHEN x_r_tokens >= x_cap THEN 0
            ELSE greatest(0, x_r_last + ((x_cap - x_r_tokens + x_rate - 1) / x_rate) * x_int - x_now) END;
        IF p_cost <= x_r_tokens THEN
            x_after := x_r_tokens - p_cost;
            va_allowed[i] := true;
            va_remaining[i] := x_after;
            va_retry[i] := 0;
            va_reset[i] := CASE WHEN x_after >= x_cap THEN 0
                ELSE greatest(0, x_r_last + ((x_cap - x_after + x_rate - 1) / x_rate) * x_int - x_now) END;
            v_cand := v_cand || ARRAY[1, x_after, x_r_last]::bigint[];
        ELSE
            va_allowed[i] := false;
            va_remaining[i] := x_r_tokens;
            va_retry[i] := x_r_last + ((p_cost - x_r_tokens + x_rate - 1) / x_rate) * x_int - x_now;
            va_reset[i] := va_reset_unch[i];
            v_cand := v_cand || ARRAY[1, x_r_tokens, x_r_last]::bigint[];
        END IF;
    END LOOP;
-- @horizon
    -- horizon: last + ceil((C - tokens) / R) * I, or last when full
    FOR i IN 1..v_n LOOP
        IF v_next[3 * i - 2] <> 0 THEN
            IF v_next[3 * i - 1] >= p_a[i] THEN
                v_horizon := greatest(v_horizon, v_next[3 * i]);
            ELSE
                v_horizon := greatest(v_horizon, v_next[3 * i]
                    + ((p_a[i] - v_next[3 * i - 1] + p_b[i] - 1) / p_b[i]) * p_c[i]);
            END IF;
        END IF;
    END LOOP;
