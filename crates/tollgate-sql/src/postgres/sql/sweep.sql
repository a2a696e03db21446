        -- opportunistic clean-up: delete up to p_sweep expired rows, skipping locked ones
        IF p_sweep > 0 THEN
            DELETE FROM {{TABLE}} WHERE ctid = ANY (ARRAY(
                SELECT ctid FROM {{TABLE}} WHERE expires_at <= v_now
                LIMIT p_sweep FOR UPDATE SKIP LOCKED));
        END IF;
