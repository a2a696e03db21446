{{DEADLINE}}
    IF p_op = 1 THEN
{{SWEEP}}
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
{{SWEEP}}
    IF p_op = 0 THEN
        RETURN NEXT;
    END IF;
    RETURN;
END;
$tollgate$;
