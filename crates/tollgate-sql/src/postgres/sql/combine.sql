    -- Several rates on one key, all-or-nothing (docs/semantics.md; algorithm::combine).
    IF p_op <> 2 THEN
        v_all := true;
        FOR i IN 1..v_n LOOP
            v_all := v_all AND va_allowed[i];
        END LOOP;
        IF v_all THEN
            v_pick := 1;
            FOR i IN 2..v_n LOOP
                IF va_remaining[i] < va_remaining[v_pick] THEN v_pick := i; END IF;
            END LOOP;
            o_allowed := true;
            o_limit := va_limit[v_pick];
            o_remaining := va_remaining[v_pick];
            o_retry_after := 0;
            o_reset_after := 0;
            FOR i IN 1..v_n LOOP
                o_reset_after := greatest(o_reset_after, va_reset[i]);
            END LOOP;
            o_denied_by := NULL;
        ELSE
            v_pick := NULL;
            FOR i IN 1..v_n LOOP
                IF NOT va_allowed[i] AND (v_pick IS NULL OR va_retry[i] > va_retry[v_pick]) THEN
                    v_pick := i;
                END IF;
            END LOOP;
            o_allowed := false;
            o_limit := va_limit[v_pick];
            o_remaining := va_remaining[v_pick];
            o_retry_after := va_retry[v_pick];
            o_reset_after := 0;
            FOR i IN 1..v_n LOOP
                o_reset_after := greatest(o_reset_after,
                    CASE WHEN va_allowed[i] THEN va_reset_unch[i] ELSE va_reset[i] END);
            END LOOP;
            o_denied_by := v_pick - 1;
        END IF;
    END IF;
