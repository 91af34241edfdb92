"""The function allowlist, checked on a real PostgreSQL server.

`SIDE_EFFECT_FREE` makes every call of a name on it a read, and a read runs inside a READ ONLY
transaction, which on PostgreSQL 15 still lets a function create and drop large objects, signal
other sessions, take session advisory locks and notify listeners. So, for every allowlisted
name: given a probe database, a second session and a LISTENing session, when the function is
called with representative arguments inside `START TRANSACTION READ ONLY` and committed, then
the database is as it was (large objects, advisory locks, sequences), the other session is alive
and no notification arrived. The caller is the cluster's superuser, the strictest choice: what a
less privileged role could do through a function, it can do too.
`test_each_probe_sees_the_harm_it_looks_for` shows that each check does catch the harm it looks
for, and the dangerous names are checked against the classifier in both call forms, `f(x)` and
attribute notation `(x).f`. The last tests check, on the server, two readings the classifier
relies on: the last of repeated EXPLAIN options wins, and a CTE hides neither its own body's table
nor a write's target.

A name on the allowlist with neither arguments here nor a written reason fails the suite.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pg8000.native
import pytest

from gatehouse.classify.functions import KNOWN, KNOWN_PREFIXES, SIDE_EFFECT_FREE, classify_function
from gatehouse.classify.postgres import classify_sql
from gatehouse.local.postgres import PostgresInfo
from gatehouse.models import StatementClass

CHANNEL = "gatehouse_probe"
SETTLE_S = 5.0

PROBE_SCHEMA = (
    "CREATE TABLE gatehouse_probe (id serial PRIMARY KEY, name text NOT NULL DEFAULT 'x', i int,"
    " n numeric, f float8, b bool, ts timestamptz, data jsonb, doc xml, r int4range, addr inet,"
    " tags text[])",
    "INSERT INTO gatehouse_probe (name, i, n, f, b, ts, data, doc, r, addr, tags) VALUES"
    " ('ada', 1, 1.50, 0.25, true, '2026-01-01 10:00+00', '{\"a\": 1}', '<a>1</a>', '[1,5)',"
    " '192.168.1.5/24', '{a,b}'),"
    " ('bob', 2, 2.25, 0.5, false, '2026-02-01 11:30+00', '{\"a\": 2}', '<a>2</a>', '[3,9)',"
    " '10.0.0.7/8', '{b,c}')",
    "CREATE INDEX gatehouse_probe_name ON gatehouse_probe (name)",
    "CREATE STATISTICS gatehouse_probe_stats ON i, n FROM gatehouse_probe",
    "CREATE TABLE gatehouse_probe_parted (k int) PARTITION BY RANGE (k)",
    "CREATE TYPE gatehouse_probe_row AS (a int)",
    "CREATE FUNCTION gatehouse_probe_touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$",
    "CREATE TRIGGER gatehouse_probe_t BEFORE UPDATE ON gatehouse_probe FOR EACH ROW"
    " EXECUTE FUNCTION gatehouse_probe_touch()",
    "CREATE SEQUENCE gatehouse_probe_seq",
    "SELECT nextval('gatehouse_probe_seq')",
    "COMMENT ON TABLE gatehouse_probe IS 'probe'",
)

# How to call each allowlisted function: an expression evaluated as
# `SELECT <expression> FROM gatehouse_probe` (two rows), or a whole query starting with "SELECT ".
CALLS: dict[str, str] = {
    # aggregates
    "count": "count(*)", "sum": "sum(i)", "avg": "avg(n)", "min": "min(ts)", "max": "max(name)",
    "bool_and": "bool_and(b)", "bool_or": "bool_or(b)", "every": "every(b)", "bit_and": "bit_and(i)",
    "bit_or": "bit_or(i)", "bit_xor": "bit_xor(i)", "string_agg": "string_agg(name, ',')",
    "array_agg": "array_agg(id)", "json_agg": "json_agg(name)", "jsonb_agg": "jsonb_agg(data)",
    "json_object_agg": "json_object_agg(name, id)", "jsonb_object_agg": "jsonb_object_agg(name, id)",
    "stddev": "stddev(n)", "stddev_pop": "stddev_pop(n)", "stddev_samp": "stddev_samp(n)",
    "variance": "variance(n)", "var_pop": "var_pop(n)", "var_samp": "var_samp(n)", "corr": "corr(f, i)",
    "covar_pop": "covar_pop(f, i)", "covar_samp": "covar_samp(f, i)", "regr_avgx": "regr_avgx(f, i)",
    "regr_avgy": "regr_avgy(f, i)", "regr_count": "regr_count(f, i)",
    "regr_intercept": "regr_intercept(f, i)", "regr_r2": "regr_r2(f, i)", "regr_slope": "regr_slope(f, i)",
    "regr_sxx": "regr_sxx(f, i)", "regr_sxy": "regr_sxy(f, i)", "regr_syy": "regr_syy(f, i)",
    "percentile_cont": "percentile_cont(0.5) WITHIN GROUP (ORDER BY f)",
    "percentile_disc": "percentile_disc(0.5) WITHIN GROUP (ORDER BY f)",
    "mode": "mode() WITHIN GROUP (ORDER BY name)", "range_agg": "range_agg(r)",
    "range_intersect_agg": "range_intersect_agg(r)", "xmlagg": "xmlagg(doc)",
    # window functions
    "row_number": "row_number() OVER (ORDER BY id)", "rank": "rank() OVER (ORDER BY id)",
    "dense_rank": "dense_rank() OVER (ORDER BY id)", "percent_rank": "percent_rank() OVER (ORDER BY id)",
    "cume_dist": "cume_dist() OVER (ORDER BY id)", "ntile": "ntile(2) OVER (ORDER BY id)",
    "lag": "lag(id) OVER (ORDER BY id)", "lead": "lead(id) OVER (ORDER BY id)",
    "first_value": "first_value(id) OVER (ORDER BY id)", "last_value": "last_value(id) OVER (ORDER BY id)",
    "nth_value": "nth_value(id, 2) OVER (ORDER BY id)",
    # strings
    "lower": "lower(name)", "upper": "upper(name)", "initcap": "initcap(name)", "length": "length(name)",
    "char_length": "char_length(name)", "character_length": "character_length(name)",
    "octet_length": "octet_length(name)", "bit_length": "bit_length(name)", "substr": "substr(name, 1, 2)",
    "substring": "substring(name FROM 1 FOR 2)", "left": "left(name, 1)", "right": "right(name, 1)",
    "lpad": "lpad(name, 5)", "rpad": "rpad(name, 5)", "ltrim": "ltrim(name, 'a')",
    "rtrim": "rtrim(name, 'a')", "btrim": "btrim(name, 'a')", "replace": "replace(name, 'a', 'b')",
    "translate": "translate(name, 'a', 'b')",
    "reverse": "reverse(name)", "repeat": "repeat(name, 2)", "split_part": "split_part('a,b', ',', 2)",
    "strpos": "strpos(name, 'a')", "position": "position('a' IN name)", "concat": "concat(name, id)",
    "concat_ws": "concat_ws(',', name, id)", "format": "format('%s-%s', name, id)",
    "quote_ident": "quote_ident(name)", "quote_literal": "quote_literal(name)",
    "quote_nullable": "quote_nullable(name)", "regexp_replace": "regexp_replace(name, 'a', 'b')",
    "regexp_match": "regexp_match(name, 'a')", "regexp_matches": "regexp_matches(name, 'a')",
    "regexp_split_to_array": "regexp_split_to_array(name, 'd')",
    "regexp_split_to_table": "regexp_split_to_table(name, 'd')", "regexp_count": "regexp_count(name, 'a')",
    "regexp_instr": "regexp_instr(name, 'a')", "regexp_like": "regexp_like(name, 'a')",
    "regexp_substr": "regexp_substr(name, 'a')", "starts_with": "starts_with(name, 'a')",
    "ascii": "ascii(name)", "chr": "chr(65)", "to_hex": "to_hex(255)",
    "overlay": "overlay(name PLACING 'z' FROM 1)", "string_to_array": "string_to_array('a,b', ',')",
    "string_to_table": "string_to_table('a,b', ',')", "array_to_string": "array_to_string(tags, ',')",
    "unistr": "unistr('d\\0061ta')", "normalize": "normalize(name)", "is_normalized": "name IS NORMALIZED",
    "similar_to_escape": "similar_to_escape('a%')", "similar_escape": "similar_escape('a%', NULL)",
    "md5": "md5(name)", "sha224": "sha224(name::bytea)", "sha256": "sha256(name::bytea)",
    "sha384": "sha384(name::bytea)", "sha512": "sha512(name::bytea)", "encode": "encode(name::bytea, 'hex')",
    "decode": "decode('6162', 'hex')", "convert_from": "convert_from(name::bytea, 'UTF8')",
    "convert_to": "convert_to(name, 'UTF8')", "text": "text(id)",
    # numbers
    "abs": "abs(-i)", "ceil": "ceil(n)", "ceiling": "ceiling(n)", "floor": "floor(n)", "round": "round(n, 1)",
    "trunc": "trunc(n)", "sign": "sign(n)", "sqrt": "sqrt(f)", "cbrt": "cbrt(f)", "power": "power(2, i)",
    "pow": "pow(2, i)", "exp": "exp(f)", "ln": "ln(n)", "log": "log(n)", "log10": "log10(n)",
    "mod": "mod(i, 2)", "div": "div(7, i)", "pi": "pi()", "degrees": "degrees(f)", "radians": "radians(f)",
    "sin": "sin(f)", "cos": "cos(f)", "tan": "tan(f)", "cot": "cot(f)", "asin": "asin(f)", "acos": "acos(f)",
    "atan": "atan(f)", "atan2": "atan2(f, 1)", "sind": "sind(30)", "cosd": "cosd(30)", "tand": "tand(30)",
    "width_bucket": "width_bucket(f, 0, 1, 4)", "gcd": "gcd(12, i)", "lcm": "lcm(4, i)",
    "factorial": "factorial(i)", "scale": "scale(n)", "min_scale": "min_scale(n)",
    "trim_scale": "trim_scale(n)", "random": "random()", "to_number": "to_number('12', '99')",
    # date and time
    "now": "now()", "clock_timestamp": "clock_timestamp()", "statement_timestamp": "statement_timestamp()",
    "transaction_timestamp": "transaction_timestamp()", "timeofday": "timeofday()",
    "date_trunc": "date_trunc('day', ts)", "date_part": "date_part('year', ts)",
    "extract": "extract(year FROM ts)", "date_bin": "date_bin('1 hour', ts, '2000-01-01 00:00+00')",
    "age": "age(ts)", "make_date": "make_date(2026, 1, 2)", "make_time": "make_time(1, 2, 3)",
    "make_timestamp": "make_timestamp(2026, 1, 2, 3, 4, 5)",
    "make_timestamptz": "make_timestamptz(2026, 1, 2, 3, 4, 5)", "make_interval": "make_interval(days => i)",
    "to_char": "to_char(ts, 'YYYY-MM-DD')", "to_date": "to_date('2026-01-02', 'YYYY-MM-DD')",
    "to_timestamp": "to_timestamp(0)", "justify_days": "justify_days(interval '35 days')",
    "justify_hours": "justify_hours(interval '27 hours')",
    "justify_interval": "justify_interval(interval '1 mon -1 hour')", "isfinite": "isfinite(ts)",
    "timezone": "timezone('UTC', ts)", "overlaps": "(ts, ts + interval '1 day') OVERLAPS (ts, ts)",
    # null handling
    "num_nulls": "num_nulls(id, i, NULL)", "num_nonnulls": "num_nonnulls(id, i, NULL)",
    # json and jsonb
    "to_json": "to_json(name)", "to_jsonb": "to_jsonb(name)", "row_to_json": "row_to_json(row(id, name))",
    "array_to_json": "array_to_json(tags)", "json_build_object": "json_build_object('a', id)",
    "jsonb_build_object": "jsonb_build_object('a', id)", "json_build_array": "json_build_array(id, name)",
    "jsonb_build_array": "jsonb_build_array(id, name)", "json_object": "json_object('{a,1}'::text[])",
    "jsonb_object": "jsonb_object('{a,1}'::text[])", "json_array_length": "json_array_length('[1,2]'::json)",
    "jsonb_array_length": "jsonb_array_length('[1,2]'::jsonb)", "json_each": "json_each(data::json)",
    "jsonb_each": "jsonb_each(data)", "json_each_text": "json_each_text(data::json)",
    "jsonb_each_text": "jsonb_each_text(data)", "json_extract_path": "json_extract_path(data::json, 'a')",
    "jsonb_extract_path": "jsonb_extract_path(data, 'a')",
    "json_extract_path_text": "json_extract_path_text(data::json, 'a')",
    "jsonb_extract_path_text": "jsonb_extract_path_text(data, 'a')",
    "json_object_keys": "json_object_keys(data::json)", "jsonb_object_keys": "jsonb_object_keys(data)",
    "json_array_elements": "json_array_elements('[1,2]'::json)",
    "jsonb_array_elements": "jsonb_array_elements('[1,2]'::jsonb)",
    "json_array_elements_text": "json_array_elements_text('[1,2]'::json)",
    "jsonb_array_elements_text": "jsonb_array_elements_text('[1,2]'::jsonb)",
    "json_typeof": "json_typeof(data::json)", "jsonb_typeof": "jsonb_typeof(data)",
    "json_strip_nulls": "json_strip_nulls('{\"a\": null}'::json)",
    "jsonb_strip_nulls": "jsonb_strip_nulls('{\"a\": null}'::jsonb)",
    "jsonb_set": "jsonb_set(data, '{a}', '3')", "jsonb_set_lax": "jsonb_set_lax(data, '{a}', NULL)",
    "jsonb_insert": "jsonb_insert(data, '{b}', '3')", "jsonb_pretty": "jsonb_pretty(data)",
    "json_populate_record": "json_populate_record(NULL::gatehouse_probe_row, data::json)",
    "jsonb_populate_record": "jsonb_populate_record(NULL::gatehouse_probe_row, data)",
    "json_populate_recordset": "json_populate_recordset(NULL::gatehouse_probe_row, '[{\"a\": 1}]'::json)",
    "jsonb_populate_recordset": "jsonb_populate_recordset(NULL::gatehouse_probe_row, '[{\"a\": 1}]'::jsonb)",
    "json_to_record": "SELECT * FROM json_to_record('{\"a\": 1}'::json) AS x(a int)",
    "jsonb_to_record": "SELECT * FROM jsonb_to_record('{\"a\": 1}'::jsonb) AS x(a int)",
    "json_to_recordset": "SELECT * FROM json_to_recordset('[{\"a\": 1}]'::json) AS x(a int)",
    "jsonb_to_recordset": "SELECT * FROM jsonb_to_recordset('[{\"a\": 1}]'::jsonb) AS x(a int)",
    "jsonb_path_query": "jsonb_path_query(data, '$.a')",
    "jsonb_path_query_array": "jsonb_path_query_array(data, '$.a')",
    "jsonb_path_query_first": "jsonb_path_query_first(data, '$.a')",
    "jsonb_path_exists": "jsonb_path_exists(data, '$.a')",
    "jsonb_path_match": "jsonb_path_match(data, '$.a == 1')",
    "jsonb_path_query_tz": "jsonb_path_query_tz(data, '$.a')",
    "jsonb_path_query_array_tz": "jsonb_path_query_array_tz(data, '$.a')",
    "jsonb_path_query_first_tz": "jsonb_path_query_first_tz(data, '$.a')",
    "jsonb_path_exists_tz": "jsonb_path_exists_tz(data, '$.a')",
    "jsonb_path_match_tz": "jsonb_path_match_tz(data, '$.a == 1')",
    # arrays and set-returning helpers
    "array_length": "array_length(tags, 1)", "array_lower": "array_lower(tags, 1)",
    "array_upper": "array_upper(tags, 1)", "array_dims": "array_dims(tags)",
    "array_ndims": "array_ndims(tags)",
    "cardinality": "cardinality(tags)", "array_append": "array_append(tags, 'z')",
    "array_prepend": "array_prepend('z', tags)", "array_cat": "array_cat(tags, tags)",
    "array_remove": "array_remove(tags, 'b')", "array_replace": "array_replace(tags, 'b', 'z')",
    "array_position": "array_position(tags, 'b')", "array_positions": "array_positions(tags, 'b')",
    "array_fill": "array_fill(0, ARRAY[2])", "trim_array": "trim_array(tags, 1)", "unnest": "unnest(tags)",
    "generate_series": "generate_series(1, 3)", "generate_subscripts": "generate_subscripts(tags, 1)",
    # ranges
    "lower_inc": "lower_inc(r)", "upper_inc": "upper_inc(r)", "lower_inf": "lower_inf(r)",
    "upper_inf": "upper_inf(r)", "isempty": "isempty(r)", "range_merge": "range_merge(r, '[20,30)')",
    "int4range": "int4range(1, i + 1)", "int8range": "int8range(1, 3)", "numrange": "numrange(1, n)",
    "tsrange": "tsrange('2026-01-01', '2026-01-02')", "tstzrange": "tstzrange(ts, ts + interval '1 day')",
    "daterange": "daterange('2026-01-01', '2026-01-02')",
    # full-text search
    "to_tsvector": "to_tsvector(name)", "to_tsquery": "to_tsquery('ada')",
    "plainto_tsquery": "plainto_tsquery('ada bob')", "phraseto_tsquery": "phraseto_tsquery('ada bob')",
    "websearch_to_tsquery": "websearch_to_tsquery('ada -bob')",
    "ts_rank": "ts_rank(to_tsvector(name), to_tsquery('ada'))",
    "ts_rank_cd": "ts_rank_cd(to_tsvector(name), to_tsquery('ada'))",
    "ts_headline": "ts_headline(name, to_tsquery('ada'))", "setweight": "setweight(to_tsvector(name), 'A')",
    "strip": "strip(to_tsvector(name))", "numnode": "numnode(to_tsquery('ada & bob'))",
    "querytree": "querytree(to_tsquery('ada & bob'))", "ts_lexize": "ts_lexize('simple', name)",
    # network addresses
    "host": "host(addr)", "hostmask": "hostmask(addr)", "netmask": "netmask(addr)",
    "network": "network(addr)",
    "broadcast": "broadcast(addr)", "family": "family(addr)", "masklen": "masklen(addr)",
    "inet_merge": "inet_merge(addr, addr)", "inet_same_family": "inet_same_family(addr, addr)",
    "abbrev": "abbrev(addr)",
    # uuids
    "gen_random_uuid": "gen_random_uuid()",
    # catalog and session information
    "current_database": "current_database()", "current_schema": "current_schema()",
    "current_schemas": "current_schemas(true)", "current_setting": "current_setting('work_mem')",
    "version": "version()", "pg_backend_pid": "pg_backend_pid()",
    "pg_postmaster_start_time": "pg_postmaster_start_time()", "pg_conf_load_time": "pg_conf_load_time()",
    "pg_is_in_recovery": "pg_is_in_recovery()", "pg_typeof": "pg_typeof(id)",
    "format_type": "format_type(23, NULL)", "pg_get_viewdef": "pg_get_viewdef('pg_roles'::regclass)",
    "pg_get_functiondef": "pg_get_functiondef('gatehouse_probe_touch()'::regprocedure)",
    "pg_get_indexdef": "pg_get_indexdef('gatehouse_probe_name'::regclass)",
    "pg_get_constraintdef": "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
    " WHERE conrelid = 'gatehouse_probe'::regclass",
    "pg_get_triggerdef": "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'gatehouse_probe_t'",
    "pg_get_ruledef": "SELECT pg_get_ruledef(oid) FROM pg_rewrite WHERE ev_class = 'pg_roles'::regclass",
    "pg_get_expr": "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef"
    " WHERE adrelid = 'gatehouse_probe'::regclass",
    "pg_get_userbyid": "pg_get_userbyid(10)",
    "pg_get_serial_sequence": "pg_get_serial_sequence('gatehouse_probe', 'id')",
    "pg_get_partkeydef": "pg_get_partkeydef('gatehouse_probe_parted'::regclass)",
    "pg_get_function_arguments": "pg_get_function_arguments('lower(text)'::regprocedure)",
    "pg_get_function_result": "pg_get_function_result('lower(text)'::regprocedure)",
    "pg_get_function_identity_arguments": "pg_get_function_identity_arguments('lower(text)'::regprocedure)",
    "pg_get_statisticsobjdef": "SELECT pg_get_statisticsobjdef(oid) FROM pg_statistic_ext"
    " WHERE stxname = 'gatehouse_probe_stats'",
    "pg_table_is_visible": "pg_table_is_visible('gatehouse_probe'::regclass)",
    "pg_type_is_visible": "pg_type_is_visible('int4'::regtype)",
    "pg_function_is_visible": "pg_function_is_visible('lower(text)'::regprocedure)",
    "pg_encoding_to_char": "pg_encoding_to_char(6)",
    "obj_description": "obj_description('gatehouse_probe'::regclass, 'pg_class')",
    "col_description": "col_description('gatehouse_probe'::regclass, 1)",
    "shobj_description": "shobj_description(1, 'pg_database')",
    "pg_size_pretty": "pg_size_pretty(1048576::bigint)", "pg_size_bytes": "pg_size_bytes('1 MB')",
    "pg_relation_size": "pg_relation_size('gatehouse_probe')",
    "pg_table_size": "pg_table_size('gatehouse_probe')",
    "pg_total_relation_size": "pg_total_relation_size('gatehouse_probe')",
    "pg_indexes_size": "pg_indexes_size('gatehouse_probe')",
    "pg_database_size": "pg_database_size(current_database())", "pg_column_size": "pg_column_size(name)",
    "pg_relation_filenode": "pg_relation_filenode('gatehouse_probe')",
    "pg_has_role": "pg_has_role(current_user, 'USAGE')",
    "has_table_privilege": "has_table_privilege('gatehouse_probe', 'SELECT')",
    "has_column_privilege": "has_column_privilege('gatehouse_probe', 'name', 'SELECT')",
    "has_any_column_privilege": "has_any_column_privilege('gatehouse_probe', 'SELECT')",
    "has_schema_privilege": "has_schema_privilege('public', 'USAGE')",
    "has_database_privilege": "has_database_privilege(current_database(), 'CONNECT')",
    "has_function_privilege": "has_function_privilege('lower(text)', 'EXECUTE')",
    "has_sequence_privilege": "has_sequence_privilege('gatehouse_probe_seq', 'USAGE')",
    "has_type_privilege": "has_type_privilege('int4', 'USAGE')", "pg_get_keywords": "pg_get_keywords()",
    "to_regclass": "to_regclass('gatehouse_probe')", "to_regtype": "to_regtype('int4')",
    "to_regproc": "to_regproc('lower')", "to_regnamespace": "to_regnamespace('public')",
    "to_regrole": "to_regrole('pg_monitor')", "array_to_tsvector": "array_to_tsvector(tags)",
    "pg_collation_for": "COLLATION FOR (name)", "pg_client_encoding": "pg_client_encoding()",
    "inet_client_addr": "inet_client_addr()", "inet_client_port": "inet_client_port()",
    "inet_server_addr": "inet_server_addr()", "inet_server_port": "inet_server_port()",
    "txid_current_snapshot": "txid_current_snapshot()", "pg_current_snapshot": "pg_current_snapshot()",
    # xml
    "xmlcomment": "xmlcomment(name)", "xpath": "xpath('/a/text()', doc)",
    "xpath_exists": "xpath_exists('/a', doc)", "xml_is_well_formed": "xml_is_well_formed('<a/>')",
    "xml_is_well_formed_document": "xml_is_well_formed_document('<a/>')",
    "xml_is_well_formed_content": "xml_is_well_formed_content('<a/>')",
}  # fmt: skip

# Allowlisted names this suite cannot call, each with the reason; a reason is checked where it can be.
NOT_IN_POSTGRES_15 = "not in PostgreSQL 15 (added in a later release); checked absent from pg_proc"
CANNOT_CALL: dict[str, str] = {
    name: NOT_IN_POSTGRES_15
    for name in (
        "any_value", "array_reverse", "array_sample", "array_shuffle", "array_sort", "casefold", "crc32",
        "crc32c", "date_add", "date_subtract", "json_agg_strict", "json_object_agg_strict",
        "json_object_agg_unique", "jsonb_agg_strict", "jsonb_object_agg_strict", "jsonb_object_agg_unique",
        "random_normal", "to_bin", "to_oct", "uuid_extract_timestamp", "uuid_extract_version", "uuidv4",
        "uuidv7",
    )
}  # fmt: skip


def query_for(name: str) -> str:
    expression = CALLS[name]
    return expression if expression.startswith("SELECT ") else f"SELECT {expression} FROM gatehouse_probe"


@dataclass(frozen=True)
class State:
    large_objects: int
    advisory_locks: int
    sequences: tuple[int, ...]
    victim_alive: bool
    notifications: int


class Probe:
    """A caller, a victim session of the same role, and a session LISTENing on `channel`."""

    def __init__(self, info: PostgresInfo, database: str, channel: str = CHANNEL) -> None:
        self.channel = channel
        self.caller = info.connect(database)
        self.victim = info.connect(database)
        self.listener = info.connect(database)
        self.listener.run(f"LISTEN {channel}")
        self.victim_pid = int(self.victim.run("SELECT pg_backend_pid()")[0][0])

    def state(self) -> State:
        # Checked from the victim's side first: a dead victim is itself the finding.
        try:
            self.victim.run("SELECT 1")
            alive = True
        except (pg8000.native.InterfaceError, pg8000.native.DatabaseError, OSError):
            alive = False
        self.listener.run("SELECT 1")  # delivers any pending notification
        ((lo_count, locks, seq, serial),) = self.listener.run(
            "SELECT (SELECT count(*) FROM pg_largeobject_metadata),"
            " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            "  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())),"
            " (SELECT last_value FROM gatehouse_probe_seq), (SELECT last_value FROM gatehouse_probe_id_seq)"
        )
        return State(
            int(lo_count), int(locks), (int(seq), int(serial)), alive, len(self.listener.notifications)
        )

    def state_after(self, before: State, harm: str) -> State:
        """The state once `harm` shows, or after a few seconds: signals and notices are asynchronous."""
        deadline = time.monotonic() + SETTLE_S
        while True:
            after = self.state()
            if getattr(after, harm) != getattr(before, harm) or time.monotonic() > deadline:
                return after
            time.sleep(0.05)

    def call_read_only(self, sql: str) -> None:
        self.caller.run("START TRANSACTION READ ONLY")
        try:
            self.caller.run(sql)
        except pg8000.native.DatabaseError:
            self.caller.run("ROLLBACK")
            raise
        # Committed, not rolled back: notifications are sent and large objects kept only at commit.
        self.caller.run("COMMIT")

    def close(self) -> None:
        for conn in (self.caller, self.victim, self.listener):
            try:
                conn.close()
            except (pg8000.native.InterfaceError, OSError):
                pass  # the victim may be the session a control test terminated


@pytest.fixture(scope="module")
def probe_database(postgres: PostgresInfo) -> Iterator[str]:
    name = f"gatehouse_allowlist_{secrets.token_hex(4)}"
    admin = postgres.connect()
    admin.run(f"CREATE DATABASE {name}")
    setup = postgres.connect(name)
    for statement in PROBE_SCHEMA:
        setup.run(statement)
    setup.close()
    try:
        yield name
    finally:
        admin.run(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(scope="module")
def probe(postgres: PostgresInfo, probe_database: str) -> Iterator[Probe]:
    shared = Probe(postgres, probe_database)
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture
def fresh_probe(postgres: PostgresInfo, probe_database: str) -> Iterator[Probe]:
    # Its own channel: what a control test sends must not reach the shared probe's listener.
    own = Probe(postgres, probe_database, channel=f"{CHANNEL}_{secrets.token_hex(4)}")
    try:
        yield own
    finally:
        own.caller.run("SELECT pg_advisory_unlock_all()")
        own.caller.run("SELECT lo_unlink(oid) FROM pg_largeobject_metadata")
        own.close()


# -- the tables cover the allowlist ---------------------------------------------------------------


def test_every_allowlisted_name_has_arguments_or_a_reason_and_nothing_else_does() -> None:
    covered = set(CALLS) | set(CANNOT_CALL)

    assert sorted(SIDE_EFFECT_FREE - covered) == [], "allowlisted without arguments or a reason"
    assert sorted(covered - SIDE_EFFECT_FREE) == [], "arguments or a reason for a name not allowlisted"
    assert sorted(set(CALLS) & set(CANNOT_CALL)) == []


@pytest.mark.parametrize("name", sorted(CALLS))
def test_each_call_really_calls_its_function_and_classifies_as_a_read(name: str) -> None:
    (statement,) = classify_sql(query_for(name)).statements

    assert name in {called.rsplit(".", 1)[-1] for called in statement.functions}, statement.functions
    assert statement.cls is StatementClass.READ, statement.reason


def test_names_said_to_be_missing_from_postgres_15_are_missing(probe: Probe) -> None:
    missing = sorted(name for name, why in CANNOT_CALL.items() if why == NOT_IN_POSTGRES_15)
    present = probe.caller.run(
        "SELECT DISTINCT proname FROM pg_proc WHERE proname = ANY(:names)", names=missing
    )

    assert present == []
    assert probe.caller.run("SHOW server_version_num")[0][0].startswith("15")


# -- every allowlisted function leaves the database as it was ----------------------------------------


@pytest.mark.parametrize("name", sorted(SIDE_EFFECT_FREE))
def test_an_allowlisted_function_changes_nothing_in_a_read_only_transaction(probe: Probe, name: str) -> None:
    if name not in CALLS:
        if name not in CANNOT_CALL:
            pytest.fail(f"{name} is allowlisted but has neither arguments nor a reason it cannot be called")
        return  # the reason is checked by test_names_said_to_be_missing_from_postgres_15_are_missing
    before = probe.state()
    assert before.victim_alive and before.advisory_locks == 0

    probe.call_read_only(query_for(name))

    assert probe.state() == before


# -- the probes catch what they look for ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "harm"),
    [
        ("SELECT lo_create(0)", "large_objects"),
        ("SELECT (0::oid).lo_create", "large_objects"),
        ("SELECT pg_advisory_lock(424242)", "advisory_locks"),
        ("SELECT (424242::bigint).pg_advisory_lock", "advisory_locks"),
        ("SELECT pg_try_advisory_lock_shared(7)", "advisory_locks"),
        ("SELECT pg_terminate_backend({victim})", "victim_alive"),
        ("SELECT ({victim}).pg_terminate_backend", "victim_alive"),
        ("SELECT pg_notify('{channel}', 'hello')", "notifications"),
        ("SELECT setval('gatehouse_probe_seq', 99)", "sequences"),
    ],
)
def test_each_probe_sees_the_harm_it_looks_for(fresh_probe: Probe, sql: str, harm: str) -> None:
    sql = sql.format(victim=fresh_probe.victim_pid, channel=fresh_probe.channel)
    before = fresh_probe.state()

    if harm == "sequences":
        # Refused inside READ ONLY (25006); the probe is shown to work on a plain transaction.
        with pytest.raises(pg8000.native.DatabaseError) as refused:
            fresh_probe.call_read_only(sql)
        assert refused.value.args[0]["C"] == "25006"
        fresh_probe.caller.run(sql)
    else:
        fresh_probe.call_read_only(sql)
    after = fresh_probe.state_after(before, harm)

    assert getattr(after, harm) != getattr(before, harm)
    assert classify_sql(sql).cls is not StatementClass.READ


# -- every function known to act is classified so, in both call forms ----------------------------------


def dangerous_forms(name: str) -> list[str]:
    return [
        f"SELECT {name}(1)",
        f"SELECT pg_catalog.{name}(1)",
        f"SELECT (1).{name}",
        f"SELECT t.x.{name} FROM t",
    ]


@pytest.mark.parametrize("name", sorted({*KNOWN, "set_config"}))
def test_a_known_function_is_not_a_read_called_either_way(name: str) -> None:
    expected = classify_function((name,))[0]
    assert expected is not StatementClass.READ

    for sql in dangerous_forms(name):
        (statement,) = classify_sql(sql).statements
        assert statement.cls is not StatementClass.READ, sql
        assert name in statement.functions or f"pg_catalog.{name}" in statement.functions, sql
    (field_call,) = classify_sql(f"SELECT (1).{name}").statements
    assert field_call.cls is expected
    assert "attribute notation" in field_call.reason


def test_every_postgres_15_function_in_a_known_family_is_not_a_read_called_either_way(probe: Probe) -> None:
    prefixes = tuple(prefix for prefix, _, _ in KNOWN_PREFIXES)
    catalog = {str(row[0]) for row in probe.caller.run("SELECT proname FROM pg_proc")}
    names = sorted(name for name in catalog if name.startswith(prefixes))
    # the families are real: this server has functions of each kind the brief names
    assert {
        "lo_create",
        "lo_unlink",
        "pg_advisory_lock",
        "pg_try_advisory_lock_shared",
        "pg_stat_reset",
    } <= set(names)

    for name in names:
        for sql in dangerous_forms(name):
            assert classify_sql(sql).cls is not StatementClass.READ, sql


def test_no_allowlisted_name_is_also_known_to_act() -> None:
    prefixes = tuple(prefix for prefix, _, _ in KNOWN_PREFIXES)

    assert sorted(name for name in SIDE_EFFECT_FREE if name in KNOWN or name.startswith(prefixes)) == []
    assert "set_config" not in SIDE_EFFECT_FREE


# -- the classifier's reading of Postgres, checked on the server --------------------------------------------


@pytest.mark.parametrize(
    ("options", "runs"),
    [
        ("ANALYZE false, ANALYZE true", True),
        ("ANALYZE true, ANALYZE false", False),
        ("ANALYZE off, COSTS off, ANALYZE on", True),
        ("ANALYZE 1, ANALYZE 0", False),
        ("BUFFERS on, SUMMARY on, SETTINGS on", False),
    ],
)
def test_explain_with_repeated_options_runs_exactly_when_the_classifier_says(
    fresh_probe: Probe, options: str, runs: bool
) -> None:
    sql = f"EXPLAIN ({options}) DELETE FROM gatehouse_probe"
    conn = fresh_probe.caller
    conn.run("START TRANSACTION")
    try:
        conn.run(sql)
        remaining = conn.run("SELECT count(*) FROM gatehouse_probe")[0][0]
    finally:
        conn.run("ROLLBACK")

    assert (remaining == 0) is runs
    assert classify_sql(sql).cls is (StatementClass.WRITE if runs else StatementClass.READ)


def test_a_cte_of_the_same_name_hides_neither_its_own_body_nor_a_write_target(fresh_probe: Probe) -> None:
    conn = fresh_probe.caller
    shadowed = (
        "WITH gatehouse_probe AS (SELECT * FROM gatehouse_probe WHERE id = 1)"
        " SELECT count(*) FROM gatehouse_probe"
    )
    target = "WITH gatehouse_probe AS (SELECT 1) DELETE FROM gatehouse_probe"
    conn.run("START TRANSACTION")
    try:
        seen = conn.run(shadowed)[0][0]
        conn.run(target)
        remaining = conn.run("SELECT count(*) FROM gatehouse_probe")[0][0]
    finally:
        conn.run("ROLLBACK")

    # the CTE body read the real table (two rows, one kept), and DELETE emptied the real table
    assert (seen, remaining) == (1, 0)
    assert classify_sql(shadowed).statements[0].relations == ("gatehouse_probe",)
    assert classify_sql(target).statements[0].relations == ("gatehouse_probe",)
