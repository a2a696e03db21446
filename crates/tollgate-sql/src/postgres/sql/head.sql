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
-- p_sweep  > 0: also delete up to p_sweep expired rows (opportunistic clean-up, done last
--          and never waiting on a locked row, so it cannot take part in a deadlock)
-- p_deadline  when the caller gives up, in µs on this server's clock (NULL: never): a call
--          still running then writes nothing and fails with SQLSTATE 57014
-- Returns one row (check, peek) or none (refund).
CREATE OR REPLACE FUNCTION {{FUNCTION}}(
    p_key text, p_now bigint, p_op integer, p_cost bigint,
    p_a bigint[], p_b bigint[], p_c bigint[], p_d bigint[], p_sweep integer,
    p_deadline bigint)
RETURNS TABLE (o_allowed boolean, o_limit bigint, o_remaining bigint,
               o_retry_after bigint, o_reset_after bigint, o_denied_by integer)
LANGUAGE plpgsql
AS $tollgate$
DECLARE
    v_now bigint := coalesce(p_now, floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
    v_n integer := coalesce(array_length(p_a, 1), 0);
{{DECLARE}}BEGIN
{{LOCK}}