"""What calling a Postgres function does, by name.

A call is a read only when the function is on `SIDE_EFFECT_FREE`, a deliberate list of built-in
functions that change nothing outside the call. Everything else makes the statement riskier:
known dangerous functions get their own class, and any other name (user-defined functions,
extensions, built-ins nobody has reviewed) is `unknown`, the highest risk, because we cannot
see what it does.

Names are matched only when the call is unqualified or qualified with `pg_catalog`:
`public.lower(x)` is a user function that happens to share a name, so it is unknown. Matching is
exact on the parser's identifier (`"Lower"(x)` is not `lower(x)`).

Attribute notation calls a one-argument function without call syntax: `(pid).pg_terminate_backend`
is `pg_terminate_backend(pid)`, and `t.f` may be `f(t)`. The parser cannot tell such a field
selection from a column, so `classify_field_call` gives the class a field name has when it IS a
call, and `is_known_to_act` says whether the name alone is enough to treat it as one (a name known
to act is never taken for a column; an unknown name is left to the catalog, see `lineage`).

This module knows nothing about the parser: it is handed the name parts and, for the one function
whose class depends on an argument (`set_config`), the first argument when it is a constant.

The allowlist was audited against PostgreSQL 15 by calling every name on it inside a READ ONLY
transaction (tests/integration/test_allowlist_functions.py): such a transaction still lets a
function create and drop large objects, signal other sessions, take session advisory locks, notify
listeners, export snapshots, sleep and summarize indexes, so none of those is on the list.
"""

from __future__ import annotations

from gatehouse.models import StatementClass

READ = StatementClass.READ
WRITE = StatementClass.WRITE
SESSION = StatementClass.SESSION
PRIVILEGE = StatementClass.PRIVILEGE
ADMIN = StatementClass.ADMIN
UNKNOWN = StatementClass.UNKNOWN

# Built-ins known to have no side effects (volatile ones such as random() included: they change
# nothing another session can see). Adding a name here makes every call of it a read: review it.
SIDE_EFFECT_FREE: frozenset[str] = frozenset(
    {
        # aggregates
        "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "bit_and", "bit_or",
        "bit_xor", "string_agg", "array_agg", "json_agg", "jsonb_agg", "json_object_agg",
        "jsonb_object_agg", "json_agg_strict", "jsonb_agg_strict", "json_object_agg_strict",
        "jsonb_object_agg_strict", "json_object_agg_unique", "jsonb_object_agg_unique",
        "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp", "corr",
        "covar_pop", "covar_samp", "regr_avgx", "regr_avgy", "regr_count", "regr_intercept",
        "regr_r2", "regr_slope", "regr_sxx", "regr_sxy", "regr_syy", "percentile_cont",
        "percentile_disc", "mode", "any_value", "range_agg", "range_intersect_agg", "xmlagg",
        # window functions
        "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
        "first_value", "last_value", "nth_value",
        # strings
        "lower", "upper", "initcap", "length", "char_length", "character_length", "octet_length",
        "bit_length", "substr", "substring", "left", "right", "lpad", "rpad", "ltrim", "rtrim",
        "btrim", "replace", "translate", "reverse", "repeat", "split_part", "strpos", "position",
        "concat", "concat_ws", "format", "quote_ident", "quote_literal", "quote_nullable",
        "regexp_replace", "regexp_match", "regexp_matches", "regexp_split_to_array",
        "regexp_split_to_table", "regexp_count", "regexp_instr", "regexp_like", "regexp_substr",
        "starts_with", "ascii", "chr", "to_hex", "to_bin", "to_oct", "overlay", "string_to_array",
        "string_to_table", "array_to_string", "unistr", "normalize", "is_normalized",
        "similar_to_escape", "similar_escape", "casefold", "md5", "sha224", "sha256", "sha384",
        "sha512", "encode", "decode", "convert_from", "convert_to", "text", "crc32", "crc32c",
        # numbers
        "abs", "ceil", "ceiling", "floor", "round", "trunc", "sign", "sqrt", "cbrt", "power",
        "pow", "exp", "ln", "log", "log10", "mod", "div", "pi", "degrees", "radians", "sin", "cos",
        "tan", "cot", "asin", "acos", "atan", "atan2", "sind", "cosd", "tand", "width_bucket",
        "gcd", "lcm", "factorial", "scale", "min_scale", "trim_scale", "random", "random_normal",
        "to_number",
        # date and time
        "now", "clock_timestamp", "statement_timestamp", "transaction_timestamp", "timeofday",
        "date_trunc", "date_part", "extract", "date_bin", "age", "make_date", "make_time",
        "make_timestamp", "make_timestamptz", "make_interval", "to_char", "to_date",
        "to_timestamp", "justify_days", "justify_hours", "justify_interval", "isfinite",
        "timezone", "overlaps", "date_add", "date_subtract",
        # null handling
        "num_nulls", "num_nonnulls",
        # json and jsonb accessors and builders
        "to_json", "to_jsonb", "row_to_json", "array_to_json", "json_build_object",
        "jsonb_build_object", "json_build_array", "jsonb_build_array", "json_object",
        "jsonb_object", "json_array_length", "jsonb_array_length", "json_each", "jsonb_each",
        "json_each_text", "jsonb_each_text", "json_extract_path", "jsonb_extract_path",
        "json_extract_path_text", "jsonb_extract_path_text", "json_object_keys",
        "jsonb_object_keys", "json_array_elements", "jsonb_array_elements",
        "json_array_elements_text", "jsonb_array_elements_text", "json_typeof", "jsonb_typeof",
        "json_strip_nulls", "jsonb_strip_nulls", "jsonb_set", "jsonb_set_lax", "jsonb_insert",
        "jsonb_pretty", "json_populate_record", "jsonb_populate_record", "json_populate_recordset",
        "jsonb_populate_recordset", "json_to_record", "jsonb_to_record", "json_to_recordset",
        "jsonb_to_recordset", "jsonb_path_query", "jsonb_path_query_array",
        "jsonb_path_query_first", "jsonb_path_exists", "jsonb_path_match", "jsonb_path_query_tz",
        "jsonb_path_query_array_tz", "jsonb_path_query_first_tz", "jsonb_path_exists_tz",
        "jsonb_path_match_tz",
        # arrays and set-returning helpers
        "array_length", "array_lower", "array_upper", "array_dims", "array_ndims", "cardinality",
        "array_append", "array_prepend", "array_cat", "array_remove", "array_replace",
        "array_position", "array_positions", "array_fill", "array_sample", "array_shuffle",
        "array_reverse", "array_sort", "trim_array", "unnest", "generate_series",
        "generate_subscripts",
        # ranges
        "lower_inc", "upper_inc", "lower_inf", "upper_inf", "isempty", "range_merge", "int4range",
        "int8range", "numrange", "tsrange", "tstzrange", "daterange",
        # full-text search (ts_stat is not here: it runs a query given as text)
        "to_tsvector", "to_tsquery", "plainto_tsquery", "phraseto_tsquery",
        "websearch_to_tsquery", "ts_rank", "ts_rank_cd", "ts_headline", "setweight", "strip",
        "numnode", "querytree", "ts_lexize",
        # network addresses
        "host", "hostmask", "netmask", "network", "broadcast", "family", "masklen", "inet_merge",
        "inet_same_family", "abbrev",
        # uuids
        "gen_random_uuid", "uuidv4", "uuidv7", "uuid_extract_timestamp", "uuid_extract_version",
        # catalog and session information (what psql's \d and ORMs' introspection run)
        "current_database", "current_schema", "current_schemas", "current_setting", "version",
        "pg_backend_pid", "pg_postmaster_start_time", "pg_conf_load_time", "pg_is_in_recovery",
        "pg_typeof", "format_type", "pg_get_viewdef", "pg_get_functiondef", "pg_get_indexdef",
        "pg_get_constraintdef", "pg_get_triggerdef", "pg_get_ruledef", "pg_get_expr",
        "pg_get_userbyid", "pg_get_serial_sequence", "pg_get_partkeydef",
        "pg_get_function_arguments", "pg_get_function_result",
        "pg_get_function_identity_arguments", "pg_get_statisticsobjdef",
        "pg_table_is_visible", "pg_type_is_visible", "pg_function_is_visible",
        "pg_encoding_to_char", "obj_description", "col_description", "shobj_description",
        "pg_size_pretty", "pg_size_bytes", "pg_relation_size", "pg_table_size",
        "pg_total_relation_size", "pg_indexes_size", "pg_database_size", "pg_column_size",
        "pg_relation_filenode", "pg_has_role", "has_table_privilege", "has_column_privilege",
        "has_any_column_privilege", "has_schema_privilege", "has_database_privilege",
        "has_function_privilege", "has_sequence_privilege", "has_type_privilege",
        "pg_get_keywords", "to_regclass", "to_regtype", "to_regproc", "to_regnamespace",
        "to_regrole", "array_to_tsvector", "pg_collation_for", "pg_client_encoding",
        "inet_client_addr", "inet_client_port", "inet_server_addr", "inet_server_port",
        "txid_current_snapshot", "pg_current_snapshot",
        # xml built from values (the *_to_xml functions that run queries are not here)
        "xmlcomment", "xpath", "xpath_exists", "xml_is_well_formed", "xml_is_well_formed_document",
        "xml_is_well_formed_content",
    }
)  # fmt: skip

# Known functions that do something: exact names.
KNOWN: dict[str, tuple[StatementClass, str]] = {
    "nextval": (WRITE, "nextval advances a sequence"),
    "setval": (WRITE, "setval changes a sequence"),
    "pg_notify": (WRITE, "pg_notify signals other sessions"),
    "txid_current": (WRITE, "txid_current assigns a transaction id"),
    "pg_current_xact_id": (WRITE, "pg_current_xact_id assigns a transaction id"),
    "setseed": (SESSION, "setseed changes the session's random seed"),
    "pg_terminate_backend": (ADMIN, "pg_terminate_backend ends another session"),
    "pg_cancel_backend": (ADMIN, "pg_cancel_backend cancels another session's query"),
    "pg_reload_conf": (ADMIN, "pg_reload_conf reloads the server configuration"),
    "pg_rotate_logfile": (ADMIN, "pg_rotate_logfile rotates the server log"),
    "pg_switch_wal": (ADMIN, "pg_switch_wal forces a WAL switch"),
    "pg_promote": (ADMIN, "pg_promote promotes a standby"),
    "pg_import_system_collations": (ADMIN, "pg_import_system_collations changes the catalog"),
    "pg_log_backend_memory_contexts": (ADMIN, "pg_log_backend_memory_contexts writes the server log"),
    "pg_create_restore_point": (ADMIN, "pg_create_restore_point writes WAL"),
    "pg_read_file": (ADMIN, "pg_read_file reads a file on the database server"),
    "pg_read_binary_file": (ADMIN, "pg_read_binary_file reads a file on the database server"),
    "pg_stat_file": (ADMIN, "pg_stat_file inspects a file on the database server"),
    "loread": (ADMIN, "loread reads a large object"),
    "lowrite": (ADMIN, "lowrite writes a large object"),
    # These take SQL (or a table to dump) as text and run it: what they do cannot be seen here.
    "query_to_xml": (UNKNOWN, "query_to_xml runs SQL given as text"),
    "query_to_xmlschema": (UNKNOWN, "query_to_xmlschema runs SQL given as text"),
    "query_to_xml_and_xmlschema": (UNKNOWN, "query_to_xml_and_xmlschema runs SQL given as text"),
    "cursor_to_xml": (UNKNOWN, "cursor_to_xml fetches from a cursor it cannot see"),
    "cursor_to_xmlschema": (UNKNOWN, "cursor_to_xmlschema fetches from a cursor it cannot see"),
    "table_to_xml": (UNKNOWN, "table_to_xml reads a table named at run time"),
    "table_to_xmlschema": (UNKNOWN, "table_to_xmlschema reads a table named at run time"),
    "table_to_xml_and_xmlschema": (UNKNOWN, "table_to_xml_and_xmlschema reads a table named at run time"),
    "schema_to_xml": (UNKNOWN, "schema_to_xml reads tables named at run time"),
    "schema_to_xmlschema": (UNKNOWN, "schema_to_xmlschema reads tables named at run time"),
    "schema_to_xml_and_xmlschema": (UNKNOWN, "schema_to_xml_and_xmlschema reads tables named at run time"),
    "database_to_xml": (UNKNOWN, "database_to_xml reads every table"),
    "database_to_xmlschema": (UNKNOWN, "database_to_xmlschema reads every table"),
    "database_to_xml_and_xmlschema": (UNKNOWN, "database_to_xml_and_xmlschema reads every table"),
    "ts_stat": (UNKNOWN, "ts_stat runs SQL given as text"),
    "ts_rewrite": (UNKNOWN, "ts_rewrite runs SQL given as text (its two-argument form)"),
    # tablefunc's crosstab(text, ...) and connectby(text, ...) run SQL given as text.
    "connectby": (UNKNOWN, "connectby runs SQL given as text"),
    "pg_export_snapshot": (SESSION, "pg_export_snapshot shares the transaction's snapshot with others"),
    "brin_summarize_new_values": (ADMIN, "brin_summarize_new_values changes an index"),
    "brin_summarize_range": (ADMIN, "brin_summarize_range changes an index"),
    "brin_desummarize_range": (ADMIN, "brin_desummarize_range changes an index"),
    "gin_clean_pending_list": (ADMIN, "gin_clean_pending_list changes an index"),
    "pg_nextoid": (ADMIN, "pg_nextoid consumes an object id (pg_upgrade support)"),
    "pg_stop_making_pinned_objects": (ADMIN, "pg_stop_making_pinned_objects is initdb support"),
    "pg_extension_config_dump": (ADMIN, "pg_extension_config_dump changes an extension's catalog entry"),
}  # fmt: skip

# Families of known functions: name prefixes, checked in order after the exact names.
KNOWN_PREFIXES: tuple[tuple[str, StatementClass, str], ...] = (
    ("pg_advisory_", WRITE, "takes or releases an advisory lock"),
    ("pg_try_advisory_", WRITE, "takes an advisory lock"),
    ("lo_", ADMIN, "works on large objects (server-side files and blobs)"),
    ("dblink", ADMIN, "connects to another database"),
    ("pg_ls_", ADMIN, "lists a directory on the database server"),
    ("pg_file_", ADMIN, "changes a file on the database server"),
    ("pg_stat_reset", ADMIN, "resets server statistics"),
    ("pg_backup_", ADMIN, "controls a server backup"),
    ("pg_start_backup", ADMIN, "starts a server backup"),
    ("pg_stop_backup", ADMIN, "stops a server backup"),
    ("pg_wal_replay_", ADMIN, "controls WAL replay"),
    ("pg_create_", ADMIN, "creates a replication slot or restore point"),
    ("pg_drop_replication_slot", ADMIN, "drops a replication slot"),
    ("pg_copy_", ADMIN, "copies a replication slot"),
    ("pg_replication_", ADMIN, "controls replication"),
    ("pg_logical_", ADMIN, "writes or reads logical replication data"),
    ("pg_log_", ADMIN, "writes to the server log"),
    ("pg_read_", ADMIN, "reads a file on the database server"),
    ("pg_rotate_logfile", ADMIN, "rotates the server log"),
    ("binary_upgrade_", ADMIN, "changes the catalog (pg_upgrade support)"),
    ("crosstab", UNKNOWN, "runs SQL given as text"),
    # Not a change, but no read either: it holds a session and the statement's locks as long as
    # asked. Listed (as unknown, like any unreviewed name) so that `(10).pg_sleep` is a call too.
    ("pg_sleep", UNKNOWN, "holds a server session and its locks for as long as asked"),
)
# One tuple for str.startswith: the field-name check runs on every qualified column reference.
_PREFIXES = tuple(prefix for prefix, _, _ in KNOWN_PREFIXES)

# Settings that change who the session acts as: set_config on them is SET ROLE in disguise.
IDENTITY_SETTINGS = frozenset({"role", "session_authorization"})
# Settings that escalate without changing the role. search_path decides which schema a name
# resolves to: a user schema ahead of pg_catalog replaces allowlisted functions with user code.
# session_replication_role = replica switches triggers (audit triggers, FK checks) off.
# The timeouts bound what one request may hold: Gatehouse sets statement_timeout (SET LOCAL) on
# every run, and a plain SET after it overrides that for the rest of the transaction.
_LIFTS_A_BOUND = "can lift the time limit Gatehouse puts on every statement"
ESCALATING_SETTINGS = {
    "search_path": "decides which schema names resolve to (user code can shadow built-ins)",
    "session_replication_role": "can switch triggers and foreign-key checks off",
    "statement_timeout": _LIFTS_A_BOUND,
    "lock_timeout": _LIFTS_A_BOUND,
    "idle_in_transaction_session_timeout": _LIFTS_A_BOUND,
    "idle_session_timeout": _LIFTS_A_BOUND,
    "transaction_timeout": _LIFTS_A_BOUND,
}


def classify_function(
    parts: tuple[str, ...], first_constant_arg: str | None = None
) -> tuple[StatementClass, str]:
    """The class a call of the function named `parts` gives its statement, and why.

    `first_constant_arg` is the call's first argument when it is a string constant, else None.
    """
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2 and parts[0] == "pg_catalog":
        name = parts[1]
    else:
        qualified = ".".join(parts)
        return UNKNOWN, f"function {qualified} is not a built-in known to be side-effect free"
    if name in SIDE_EFFECT_FREE:
        return READ, ""
    if name == "set_config":
        return _set_config(first_constant_arg)
    known = KNOWN.get(name)
    if known is not None:
        return known
    for prefix, cls, what in KNOWN_PREFIXES:
        if name.startswith(prefix):
            return cls, f"{name} {what}"
    return UNKNOWN, f"function {name} is not known to be side-effect free"


def _set_config(setting: str | None) -> tuple[StatementClass, str]:
    if setting is None:
        return PRIVILEGE, "set_config with a computed setting name may change the role"
    if setting.lower() in IDENTITY_SETTINGS:
        return PRIVILEGE, f"set_config('{setting}') changes the role the session acts as"
    if setting.lower() in ESCALATING_SETTINGS:
        return PRIVILEGE, f"set_config('{setting}') {ESCALATING_SETTINGS[setting.lower()]}"
    return SESSION, "set_config changes a session setting"


def is_known_to_act(name: str) -> bool:
    """True when the unqualified function `name` is known to do something (never a read).

    Such a name in a field selection (`(x).name`, `t.name`) is treated as a call: a column that
    happens to carry the name of a dangerous built-in costs a stricter class, never a missed call.
    """
    return name in KNOWN or name == "set_config" or name.startswith(_PREFIXES)


def classify_field_call(name: str) -> tuple[StatementClass, str]:
    """The class a field selection `(x).name` gives its statement when it is a call of `name`.

    That is `classify_function((name,))`, with a reason that says the call used attribute
    notation (only one-argument functions can be called so, and never schema-qualified).
    """
    cls, reason = classify_function((name,))
    if cls is READ:
        return READ, ""
    what = reason.removeprefix(f"function {name} ").removeprefix(f"{name} ")
    return cls, f"{name} called with attribute notation {what}"
