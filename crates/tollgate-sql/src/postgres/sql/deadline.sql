    -- the caller gives up at p_deadline (µs on this server's clock, NULL: no deadline): past
    -- it, write nothing (the exception rolls back the whole call) and report a timeout
    IF p_deadline IS NOT NULL
       AND floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint > p_deadline THEN
        RAISE EXCEPTION 'tollgate: the call passed its deadline before writing (nothing was charged)'
            USING ERRCODE = '57014';
    END IF;
