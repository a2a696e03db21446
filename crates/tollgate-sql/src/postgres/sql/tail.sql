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

    IF p_op = 1 THEN
        RETURN NEXT;
        RETURN;
    END IF;
    -- check: charge every rate when all admit, else persist the uncharged (settled) state;
    -- refund: the refunded state.
    IF p_op = 2 OR o_allowed THEN
        v_next := v_cand;
    ELSE
        v_next := v_settle;
    END IF;
{{HORIZON}}
    IF v_horizon <= v_now THEN
        -- back to fresh: no row needed
        DELETE FROM {{TABLE}} t WHERE t.key = p_key;
    ELSIF v_next IS DISTINCT FROM v_state THEN
        UPDATE {{TABLE}} t SET state = v_next, expires_at = v_horizon WHERE t.key = p_key;
    END IF;
    IF p_op = 0 THEN
        RETURN NEXT;
    END IF;
    RETURN;
END;
$tollgate$;
