        -- peek: read only, no lock. check / refund: lock the key's row (creating it if
        -- needed) until commit, so concurrent calls on one key are serialised: no
        -- read-then-write race. (A refund of an unknown key has nothing to give back.)
        IF p_op = 1 THEN
            SELECT t.state INTO v_state FROM {{TABLE}} t WHERE t.key = p_key;
            v_found := FOUND;
        ELSE
            LOOP
                SELECT t.state INTO v_state FROM {{TABLE}} t WHERE t.key = p_key FOR UPDATE;
                IF FOUND THEN
                    v_found := cardinality(v_state) > 0;
                    EXIT;
                END IF;
                IF p_op = 2 THEN
                    RETURN;
                END IF;
                INSERT INTO {{TABLE}} (key, state, expires_at) VALUES (p_key, '{}', 0)
                    ON CONFLICT (key) DO NOTHING;
            END LOOP;
        END IF;
