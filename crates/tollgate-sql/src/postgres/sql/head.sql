-- tollgate-sql: one decision on one key, in one round trip. Generated from
-- crates/tollgate-sql/src/postgres/sql/*.sql by PgStore::migrate; mirrors
-- crates/tollgate/src/algorithm/{{ALGORITHM}}.rs and docs/semantics.md line for line
-- in bigint arithmetic.
--
-- p_key    the key (already namespaced)
-- p_now    the caller's time in µs, or NULL for the database clock (clock_timestamp())
-- p_op     0 check, 1 peek, 2 refund (p_cost is the amount)
-- p_cost   the cost (>= 1, <= every rate's capacity: checked by the caller)
-- p_a..p_d per-rate parameters (see the algorithm section below)
-- p_sweep  > 0: first delete up to p_sweep expired rows (opportunistic clean-up)
-- Returns one row (check, peek) or none (refund).
CREATE OR REPLACE FUNCTION {{FUNCTION}}(
    p_key text, p_now bigint, p_op integer, p_cost bigint,
    p_a bigint[], p_b bigint[], p_c bigint[], p_d bigint[], p_sweep integer)
RETURNS TABLE (o_allowed boolean, o_limit bigint, o_remaining bigint,
               o_retry_after bigint, o_reset_after bigint, o_denied_by integer)
LANGUAGE plpgsql
AS $tollgate$
DECLARE
    v_now bigint := coalesce(p_now, floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
    v_n integer := coalesce(array_length(p_a, 1), 0);
    v_state bigint[];
    v_found boolean := false;
    v_valid boolean;
    v_old bigint[] := '{}';
    v_cand bigint[] := '{}';
    v_settle bigint[] := '{}';
    v_next bigint[];
    v_horizon bigint := 0;
    va_allowed boolean[] := '{}';
    va_limit bigint[] := '{}';
    va_remaining bigint[] := '{}';
    va_retry bigint[] := '{}';
    va_reset bigint[] := '{}';
    va_reset_unch bigint[] := '{}';
    v_all boolean;
    v_pick integer;
    i integer;
    j integer;
    x_ok boolean;
    x_now bigint;
    x_tat bigint; x_tat0 bigint; x_new_tat bigint; x_t bigint; x_tau bigint;
    x_cap bigint; x_rate bigint; x_int bigint; x_present boolean; x_tokens bigint; x_last bigint;
    x_k bigint; x_r_tokens bigint; x_r_last bigint; x_after bigint;
    x_l bigint; x_w bigint; x_s_ws bigint; x_s_count bigint; x_s_prev bigint; x_s_curr bigint;
    x_ws bigint; x_cnt bigint; x_cnt_after bigint; x_until_end bigint;
    x_e bigint; x_weighted bigint; x_prev bigint; x_curr bigint; x_curr_after bigint;
    x_room bigint; x_e_min bigint; x_e2 bigint; x_wait bigint;
    x_unch bigint; x_excess bigint; x_sum bigint; x_retry bigint; x_len integer; x_wmax bigint;
    x_left bigint;
BEGIN
    IF p_sweep > 0 THEN
        DELETE FROM {{TABLE}} WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM {{TABLE}} WHERE expires_at <= v_now
            LIMIT p_sweep FOR UPDATE SKIP LOCKED));
    END IF;
    IF p_op = 1 THEN
        -- peek: read only, no lock
        SELECT t.state INTO v_state FROM {{TABLE}} t WHERE t.key = p_key;
        v_found := FOUND;
    ELSE
        -- check / refund: lock the key's row (creating it if needed) until commit, so
        -- concurrent calls on one key are serialised: no read-then-write race.
        LOOP
            SELECT t.state INTO v_state FROM {{TABLE}} t WHERE t.key = p_key FOR UPDATE;
            IF FOUND THEN
                v_found := cardinality(v_state) > 0;
                EXIT;
            END IF;
            IF p_op = 2 THEN
                RETURN; -- refund of an unknown key: nothing to give back
            END IF;
            INSERT INTO {{TABLE}} (key, state, expires_at) VALUES (p_key, '{}', 0)
                ON CONFLICT (key) DO NOTHING;
        END LOOP;
    END IF;
