//! Function-name knowledge: which calls are harmless on a replica, which need the
//! primary, and which tie the client to one server session.

use super::classify::ClassifierConfig;

/// What a function call means for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FnClass {
    /// Built-in read-only function, or declared safe in the config.
    Safe,
    /// Writes, takes locks, or only works on a primary.
    SideEffect,
    /// Anything else: a user function could write, so it is not proven read-only.
    Unknown,
}

/// Read-only built-ins, lower case and sorted for `binary_search` (`tests.rs` checks it): only
/// functions PostgreSQL 15 has in pg_catalog. An extension's name (such as `levenshtein`,
/// `unaccent`, `uuid_generate_v4`) or one a later release added may be a user's own function on
/// a given server, which could do anything.
#[rustfmt::skip]
pub(super) const SAFE_FUNCTIONS: &[&str] = &[
    "abbrev", "abs", "acos", "age", "array_agg", "array_append", "array_cat", "array_dims",
    "array_fill", "array_length", "array_lower", "array_ndims", "array_position", "array_positions",
    "array_prepend", "array_remove", "array_replace", "array_to_json", "array_to_string",
    "array_to_tsvector", "array_upper", "ascii", "asin", "atan", "atan2", "avg", "bit_and",
    "bit_count", "bit_length", "bit_or", "bit_xor", "bool", "bool_and", "bool_or", "bpchar",
    "broadcast", "btrim", "cardinality", "cbrt", "ceil", "ceiling", "char_length",
    "character_length", "chr", "cidr", "clock_timestamp", "col_description", "concat", "concat_ws",
    "convert", "convert_from", "convert_to", "corr", "cos", "cosh", "cot", "count", "covar_pop",
    "covar_samp", "cume_dist", "current_database", "current_query", "current_schema",
    "current_schemas", "current_setting", "date", "date_bin", "date_part", "date_trunc",
    "daterange", "decode", "degrees", "dense_rank", "div", "encode", "every", "exp", "factorial",
    "family", "first_value", "float4", "float8", "floor", "format", "format_type", "gcd",
    "gen_random_uuid", "generate_series", "generate_subscripts", "get_bit", "get_byte",
    "has_any_column_privilege", "has_column_privilege", "has_database_privilege",
    "has_function_privilege", "has_language_privilege", "has_schema_privilege",
    "has_sequence_privilege", "has_server_privilege", "has_table_privilege",
    "has_tablespace_privilege", "has_type_privilege", "hashtext", "hashtextextended", "host",
    "hostmask", "inet_client_addr", "inet_client_port", "inet_merge", "inet_same_family",
    "inet_server_addr", "inet_server_port", "initcap", "int2", "int4", "int4range", "int8",
    "int8range", "isempty", "isfinite", "json_agg", "json_array_elements",
    "json_array_elements_text", "json_array_length", "json_build_array", "json_build_object",
    "json_each", "json_each_text", "json_extract_path", "json_extract_path_text", "json_object_agg",
    "json_object_keys", "json_populate_record", "json_populate_recordset", "json_strip_nulls",
    "json_to_record", "json_to_recordset", "json_typeof", "jsonb_agg", "jsonb_array_elements",
    "jsonb_array_elements_text", "jsonb_array_length", "jsonb_build_array", "jsonb_build_object",
    "jsonb_each", "jsonb_each_text", "jsonb_extract_path", "jsonb_extract_path_text",
    "jsonb_insert", "jsonb_object", "jsonb_object_agg", "jsonb_object_keys", "jsonb_path_exists",
    "jsonb_path_exists_tz", "jsonb_path_match", "jsonb_path_query", "jsonb_path_query_array",
    "jsonb_path_query_first", "jsonb_path_query_tz", "jsonb_populate_record",
    "jsonb_populate_recordset", "jsonb_pretty", "jsonb_set", "jsonb_set_lax", "jsonb_strip_nulls",
    "jsonb_to_record", "jsonb_to_recordset", "jsonb_typeof", "justify_days", "justify_hours",
    "justify_interval", "lag", "last_value", "lcm", "lead", "left", "length", "ln", "log", "log10",
    "lower", "lower_inc", "lower_inf", "lpad", "ltrim", "macaddr", "make_date", "make_interval",
    "make_time", "make_timestamp", "make_timestamptz", "masklen", "max", "md5", "min", "min_scale",
    "mod", "mode", "money", "name", "netmask", "network", "now", "nth_value", "ntile",
    "num_nonnulls", "num_nulls", "numnode", "numrange", "obj_description", "octet_length", "oid",
    "parse_ident", "percent_rank", "percentile_cont", "percentile_disc", "pg_backend_pid",
    "pg_blocking_pids", "pg_char_to_encoding", "pg_collation_for", "pg_column_is_updatable",
    "pg_column_size", "pg_conf_load_time", "pg_current_logfile", "pg_current_snapshot",
    "pg_database_size", "pg_describe_object", "pg_encoding_to_char", "pg_function_is_visible",
    "pg_get_constraintdef", "pg_get_expr", "pg_get_function_arguments",
    "pg_get_function_identity_arguments", "pg_get_function_result", "pg_get_functiondef",
    "pg_get_indexdef", "pg_get_keywords", "pg_get_partkeydef", "pg_get_ruledef",
    "pg_get_serial_sequence", "pg_get_statisticsobjdef", "pg_get_triggerdef", "pg_get_userbyid",
    "pg_get_viewdef", "pg_get_wal_replay_pause_state", "pg_has_role", "pg_identify_object",
    "pg_index_column_has_property", "pg_index_has_property", "pg_indexam_has_property",
    "pg_indexes_size", "pg_is_in_recovery", "pg_is_wal_replay_paused", "pg_jit_available",
    "pg_last_wal_receive_lsn", "pg_last_wal_replay_lsn", "pg_last_xact_replay_timestamp",
    "pg_listening_channels", "pg_postmaster_start_time", "pg_relation_filenode",
    "pg_relation_filepath", "pg_relation_is_updatable", "pg_relation_size", "pg_settings_get_flags",
    "pg_size_bytes", "pg_size_pretty", "pg_sleep", "pg_sleep_for", "pg_sleep_until",
    "pg_snapshot_xmax", "pg_snapshot_xmin", "pg_stat_get_numscans", "pg_table_is_visible",
    "pg_table_size", "pg_tablespace_location", "pg_tablespace_size", "pg_total_relation_size",
    "pg_type_is_visible", "pg_typeof", "pg_visible_in_snapshot", "pg_wal_lsn_diff",
    "phraseto_tsquery", "pi", "plainto_tsquery", "power", "querytree", "quote_ident",
    "quote_literal", "quote_nullable", "radians", "random", "range_agg", "range_intersect_agg",
    "range_merge", "rank", "regclass", "regexp_count", "regexp_instr", "regexp_like",
    "regexp_match", "regexp_matches", "regexp_replace", "regexp_split_to_array",
    "regexp_split_to_table", "regexp_substr", "regr_avgx", "regr_avgy", "regr_count",
    "regr_intercept", "regr_r2", "regr_slope", "regr_sxx", "regr_sxy", "regr_syy", "repeat",
    "replace", "reverse", "right", "round", "row_number", "row_security_active", "row_to_json",
    "rpad", "rtrim", "scale", "set_masklen", "setweight", "sha224", "sha256", "sha384", "sha512",
    "shobj_description", "sign", "sin", "sinh", "split_part", "sqrt", "starts_with",
    "statement_timestamp", "stddev", "stddev_pop", "stddev_samp", "string_agg", "string_to_array",
    "string_to_table", "strip", "strpos", "substr", "sum", "tan", "tanh", "text", "timeofday",
    "timestamptz", "timetz", "timezone", "to_ascii", "to_char", "to_date", "to_hex", "to_json",
    "to_jsonb", "to_number", "to_regclass", "to_regnamespace", "to_regproc", "to_regprocedure",
    "to_regrole", "to_regtype", "to_timestamp", "to_tsquery", "to_tsvector",
    "transaction_timestamp", "translate", "trim_array", "trim_scale", "trunc", "ts_headline",
    "ts_lexize", "ts_rank", "ts_rank_cd", "tsrange", "tstzrange", "tsvector_to_array", "unistr",
    "unnest", "upper", "upper_inc", "upper_inf", "var_pop", "var_samp", "variance", "version",
    "websearch_to_tsquery", "width_bucket", "xml_is_well_formed", "xmlagg", "xpath", "xpath_exists",
];

/// Functions that write, lock, change session state or need the primary; sorted.
#[rustfmt::skip]
pub(super) const SIDE_EFFECT_FUNCTIONS: &[&str] = &[
    "currval", "lastval", "loread", "lowrite", "nextval", "pg_backup_start", "pg_backup_stop",
    "pg_cancel_backend", "pg_current_xact_id", "pg_current_xact_id_if_assigned",
    "pg_drop_replication_slot", "pg_export_snapshot", "pg_file_rename", "pg_file_unlink",
    "pg_file_write", "pg_import_system_collations", "pg_log_backend_memory_contexts",
    "pg_logical_emit_message", "pg_logical_slot_get_binary_changes", "pg_logical_slot_get_changes",
    "pg_logical_slot_peek_binary_changes", "pg_logical_slot_peek_changes",
    "pg_notification_queue_usage", "pg_notify", "pg_promote", "pg_reload_conf",
    "pg_replication_slot_advance", "pg_rotate_logfile", "pg_start_backup", "pg_stop_backup",
    "pg_switch_wal", "pg_switch_xlog", "pg_terminate_backend", "pg_wal_replay_pause",
    "pg_wal_replay_resume", "set_config", "setval", "txid_current", "txid_current_if_assigned",
];

/// Whole families: large objects, dblink, advisory locks, WAL/slot/origin management.
const SIDE_EFFECT_PREFIXES: &[&str] = &[
    "dblink",
    "lo_",
    "pg_advisory_",
    "pg_copy_",
    "pg_create_",
    "pg_current_wal_",
    "pg_current_xlog_",
    "pg_replication_origin_",
    "pg_stat_reset",
    "pg_try_advisory_",
];

/// Session-level advisory locks: held until unlocked or the session ends.
const SESSION_LOCKS: &[&str] =
    &["pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared"];

/// Longest name [`FoldedName`] holds without giving up (PostgreSQL's limit is 63 per part).
const NAME_CAP: usize = 200;

/// A possibly qualified function name, folded like PostgreSQL folds identifiers, kept
/// on the stack so the common path does not allocate.
pub struct FoldedName {
    buf: [u8; NAME_CAP],
    len: usize,
    last_start: usize,
    parts: u8,
    overflow: bool,
}

impl Default for FoldedName {
    fn default() -> Self {
        FoldedName { buf: [0; NAME_CAP], len: 0, last_start: 0, parts: 0, overflow: false }
    }
}

impl FoldedName {
    /// Appends one part from its token text: unquoted parts fold to lower case, quoted
    /// ones (`"x"`, `U&"x"`) keep case and lose their quotes.
    pub fn push(&mut self, raw: &[u8], quoted: bool) {
        if self.parts > 0 {
            self.put(b'.');
        }
        self.last_start = self.len;
        self.parts = self.parts.saturating_add(1);
        if !quoted {
            raw.iter().for_each(|b| self.put(b.to_ascii_lowercase()));
            return;
        }
        let body = raw
            .iter()
            .position(|&b| b == b'"')
            .and_then(|q| raw.get(q + 1..raw.len().saturating_sub(1)))
            .unwrap_or_default();
        let mut prev_quote = false;
        for &b in body {
            // `""` inside a quoted identifier stands for one `"`.
            if b == b'"' && prev_quote {
                prev_quote = false;
                continue;
            }
            prev_quote = b == b'"';
            self.put(b);
        }
    }

    fn put(&mut self, b: u8) {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }

    /// The whole name, e.g. `public.myfunc`.
    pub fn full(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    /// The function name without its schema.
    pub fn last(&self) -> &[u8] {
        self.buf.get(self.last_start..self.len).unwrap_or_default()
    }

    /// The qualifier, if any (`pg_catalog` in `pg_catalog.lower`).
    pub(super) fn qualifier(&self) -> Option<&[u8]> {
        let end = self.last_start.checked_sub(1)?;
        self.buf.get(..end)
    }
}

fn in_sorted(list: &[&str], name: &[u8]) -> bool {
    list.binary_search_by(|probe| probe.as_bytes().cmp(name)).is_ok()
}

/// Whether `name` (folded, unqualified) is a known side-effect function.
pub fn is_side_effect(name: &[u8]) -> bool {
    in_sorted(SIDE_EFFECT_FUNCTIONS, name) || SIDE_EFFECT_PREFIXES.iter().any(|p| name.starts_with(p.as_bytes()))
}

/// Whether `name` (folded, unqualified) is a built-in read-only function.
pub fn is_builtin_safe(name: &[u8]) -> bool {
    in_sorted(SAFE_FUNCTIONS, name)
}

/// PostgreSQL's reserved and column-name keywords: before `(` they are syntax (`IN (`, `ROW (`,
/// `COALESCE (`), never a user function. Other keywords (`freeze`, `filter`, `over`...) may name
/// one. Sorted for `binary_search` (`purity_tests.rs` checks it).
#[rustfmt::skip]
pub(super) const NOT_FUNCTION_NAMES: &[&str] = &[
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "between",
    "bigint", "bit", "boolean", "both", "case", "cast", "char", "character", "check", "coalesce",
    "collate", "column", "constraint", "create", "current_catalog", "current_date", "current_role",
    "current_time", "current_timestamp", "current_user", "dec", "decimal", "default", "deferrable",
    "desc", "distinct", "do", "else", "end", "except", "exists", "extract", "false", "fetch",
    "float", "for", "foreign", "from", "grant", "greatest", "group", "grouping", "having", "in",
    "initially", "inout", "int", "integer", "intersect", "interval", "into", "json", "json_array",
    "json_arrayagg", "json_exists", "json_object", "json_objectagg", "json_query", "json_scalar",
    "json_serialize", "json_table", "json_value", "lateral", "leading", "least", "limit",
    "localtime", "localtimestamp", "merge_action", "national", "nchar", "none", "normalize", "not",
    "null", "nullif", "numeric", "offset", "on", "only", "or", "order", "out", "overlay", "placing",
    "position", "precision", "primary", "real", "references", "returning", "row", "select",
    "session_user", "setof", "smallint", "some", "substring", "symmetric", "system_user", "table",
    "then", "time", "timestamp", "to", "trailing", "treat", "trim", "true", "union", "unique",
    "user", "using", "values", "varchar", "variadic", "when", "where", "window", "with",
    "xmlattributes", "xmlconcat", "xmlelement", "xmlexists", "xmlforest", "xmlnamespaces",
    "xmlparse", "xmlpi", "xmlroot", "xmlserialize", "xmltable",
];

/// Whether a keyword followed by `(` cannot be a call of a user function.
pub fn is_syntax_before_paren(word: &[u8]) -> bool {
    let lower = word.to_ascii_lowercase();
    in_sorted(NOT_FUNCTION_NAMES, &lower)
}

/// Whether calling `name` is proven to leave no state in the session: one of PostgreSQL's own
/// side-effect-free functions, unqualified or as `pg_catalog.x`. Functions declared safe in the
/// config are safe to run on a replica, not proven to leave the session alone.
pub fn is_pure_call(name: &FoldedName) -> bool {
    let builtin_scope = match name.qualifier() {
        None => true,
        Some(q) => q == b"pg_catalog",
    };
    !name.overflow && name.parts > 0 && builtin_scope && is_builtin_safe(name.last())
}

/// Classifies a call of `name`.
///
/// Built-ins count only unqualified or as `pg_catalog.x`: `myschema.lower` is somebody
/// else's function. Config entries match the qualified or the bare name.
pub fn classify_call(name: &FoldedName, cfg: &ClassifierConfig) -> FnClass {
    if name.overflow || name.parts == 0 {
        return FnClass::Unknown;
    }
    let last = name.last();
    if is_side_effect(last) {
        return FnClass::SideEffect;
    }
    let builtin_scope = match name.qualifier() {
        None => true,
        Some(q) => q == b"pg_catalog",
    };
    if builtin_scope && is_builtin_safe(last) {
        return FnClass::Safe;
    }
    if cfg_contains(cfg, name.full()) || cfg_contains(cfg, last) {
        return FnClass::Safe;
    }
    FnClass::Unknown
}

fn cfg_contains(cfg: &ClassifierConfig, name: &[u8]) -> bool {
    !cfg.safe_functions.is_empty() && std::str::from_utf8(name).is_ok_and(|s| cfg.safe_functions.contains(s))
}

/// What calling `name` (folded, unqualified) does to the session, for pinning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCall {
    /// Nothing session-wide.
    None,
    /// Takes a session-level advisory lock.
    AdvisoryLock,
    /// `set_config`: session-wide unless its third argument is literally true.
    SetConfig,
    /// Leaves state that outlives DISCARD ALL (a dblink connection, the random seed): the
    /// client keeps its server, which is closed when it leaves. The pin reason.
    Lasting(&'static str),
}

/// Pin reasons whose state outlives DISCARD ALL: the server is closed, not reset and reused.
/// `large_query`, `unicode_identifier` and `standard_conforming_strings` mean text pgshift did not
/// read (or read otherwise than the server): it may have done any of it.
pub const LASTING_PINS: [&str; 7] = [
    "dblink",
    "setseed",
    "load",
    "large_query",
    "unicode_identifier",
    "standard_conforming_strings",
    "client_encoding",
];

/// Whether calling `name` may leave state behind in the server session.
pub fn session_call(name: &[u8]) -> SessionCall {
    if name == b"set_config" {
        SessionCall::SetConfig
    } else if SESSION_LOCKS.iter().any(|l| l.as_bytes() == name) {
        SessionCall::AdvisoryLock
    } else if name == b"dblink_connect" || name == b"dblink_connect_u" {
        SessionCall::Lasting("dblink")
    } else if name == b"setseed" {
        SessionCall::Lasting("setseed")
    } else {
        SessionCall::None
    }
}
