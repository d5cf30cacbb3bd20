//! Configuration: file, environment overrides, errors that name the key,
//! and secrets that never print.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use switchboard::config::{self, AiProvider, ConfigError, Settings};

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn load(text: &str, vars: &[(&str, &str)]) -> Result<config::Loaded, ConfigError> {
    let f = file(text);
    config::load_with_env(f.path(), true, env(vars))
}

#[test]
fn the_shipped_config_toml_parses_and_equals_the_built_in_defaults() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let loaded = config::load_with_env(&path, true, Vec::new()).unwrap();
    assert_eq!(
        loaded.settings,
        Settings::default(),
        "config.toml documents the defaults"
    );
}

#[test]
fn a_missing_default_file_means_all_defaults_but_a_named_one_is_an_error() {
    let missing = PathBuf::from("/nonexistent/switchboard.toml");
    assert_eq!(
        config::load_with_env(&missing, false, Vec::new()).unwrap().settings,
        Settings::default()
    );
    assert!(matches!(
        config::load_with_env(&missing, true, Vec::new()),
        Err(ConfigError::Read { .. })
    ));
}

#[test]
fn an_unknown_key_in_the_file_is_an_error_naming_the_key_and_line() {
    let err = load(
        "[server]\nbind = \"127.0.0.1:9000\"\n\n[database]\nmax_conections = 5\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("max_conections"), "{err}");
    assert!(err.contains("line 5"), "{err}");
}

#[test]
fn an_unknown_section_is_an_error_naming_it() {
    let err = load("[databse]\nurl = \"postgres://x@y/z\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("databse"), "{err}");
}

#[test]
fn a_wrong_type_is_an_error_naming_the_key_and_line() {
    let err = load("[database]\nmax_connections = \"many\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_connections") || err.contains("line 2"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn an_invalid_value_is_an_error_naming_the_key() {
    let err = load("[database]\nmax_connections = 4\nmin_idle = 8\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("database.min_idle"), "{err}");
    let err = load("[server]\nbind = \"everywhere\"\n", &[]).unwrap_err().to_string();
    assert!(err.contains("server.bind"), "{err}");
    let err = load("[ai]\nprovider = \"magic\"\n", &[]).unwrap_err().to_string();
    assert!(err.contains("magic") && err.contains("line 2"), "{err}");
}

#[test]
fn embedded_server_settings_take_any_toml_scalar_and_refuse_switchboards_own_and_bad_names() {
    let s = load(
        "[database.embedded.server_settings]\n\
         shared_preload_libraries = \"pg_stat_statements\"\n\
         log_min_duration_statement = 80\n\
         log_checkpoints = true\n\
         checkpoint_completion_target = 0.9\n\
         log_line_prefix = \"%m it's \"\n",
        &[("SWITCHBOARD__DATABASE__EMBEDDED__SERVER_SETTINGS__WORK_MEM", "8MB")],
    )
    .unwrap()
    .settings;
    let lit = |k: &str| s.database.embedded.server_settings[k].conf_literal();
    assert_eq!(lit("shared_preload_libraries"), "'pg_stat_statements'");
    assert_eq!(lit("log_min_duration_statement"), "'80'");
    assert_eq!(lit("log_checkpoints"), "'on'");
    assert_eq!(lit("checkpoint_completion_target"), "'0.9'");
    // A quote cannot end the value early.
    assert_eq!(lit("log_line_prefix"), "'%m it''s '");
    assert_eq!(lit("work_mem"), "'8MB'");

    for (text, key) in [
        ("port = 5432", "server_settings.port"),
        ("Listen_Addresses = \"*\"", "server_settings.Listen_Addresses"),
        ("\"bad name\" = 1", "server_settings.bad name"),
        ("log_line_prefix = \"a\\nb\"", "server_settings.log_line_prefix"),
    ] {
        let err = load(&format!("[database.embedded.server_settings]\n{text}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
    let err = load("[database.embedded.server_settings]\nwork_mem = [1]\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn environment_variables_override_the_file() {
    let loaded = load(
        "[server]\nbind = \"127.0.0.1:9000\"\n[database]\nmax_connections = 5\n",
        &[
            ("SWITCHBOARD__SERVER__BIND", "0.0.0.0:8081"),
            ("SWITCHBOARD__DATABASE__MAX_CONNECTIONS", "32"),
            ("SWITCHBOARD__DATABASE__EMBEDDED__PORT", "6000"),
            ("SWITCHBOARD__DATABASE__URL", "postgres://app:pw@db:5432/chat"),
            ("SWITCHBOARD__AI__PROVIDER", "simulated"),
            ("SWITCHBOARD__API__TOKENS", "[\"a\", \"b\"]"),
            ("UNRELATED", "x"),
        ],
    )
    .unwrap();
    let s = loaded.settings;
    assert_eq!(s.server.bind, "0.0.0.0:8081");
    assert_eq!(s.database.max_connections, 32);
    assert_eq!(s.database.embedded.port, 6000);
    assert_eq!(s.database.url.unwrap().expose(), "postgres://app:pw@db:5432/chat");
    assert_eq!(s.ai.provider, AiProvider::Simulated);
    assert_eq!(s.api.tokens.len(), 2);
    assert_eq!(loaded.env_keys.len(), 6);
}

#[test]
fn a_numeric_looking_secret_from_the_environment_stays_a_string() {
    let s = load(
        "",
        &[
            ("SWITCHBOARD__WHATSAPP__VERIFY_TOKEN", "123456"),
            ("SWITCHBOARD__WHATSAPP__PHONE_NUMBER_ID", "1098765432"),
        ],
    )
    .unwrap()
    .settings;
    assert_eq!(s.whatsapp.verify_token.unwrap().expose(), "123456");
    assert_eq!(s.whatsapp.phone_number_id.as_deref(), Some("1098765432"));
}

#[test]
fn a_bad_environment_variable_is_an_error_naming_the_variable_and_key() {
    let err = load("", &[("SWITCHBOARD__DATABASE__MAX_CONNECTIONS", "lots")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("SWITCHBOARD__DATABASE__MAX_CONNECTIONS"), "{err}");
    assert!(err.contains("database.max_connections"), "{err}");
    let err = load("", &[("SWITCHBOARD__DATABASE__NO_SUCH_KEY", "1")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no_such_key"), "{err}");
}

#[test]
fn secrets_never_appear_in_debug_output_or_the_rendered_configuration() {
    let s = load(
        "[whatsapp]\napp_secret = \"app-secret-value\"\naccess_token = \"EAAG-token-value\"\n\
         verify_token = \"verify-value\"\n[api]\ntokens = [\"api-token-value\"]\n\
         [database]\nurl = \"postgres://app:db-password-value@db:5432/chat\"\n",
        &[],
    )
    .unwrap()
    .settings;
    let debug = format!("{s:?}");
    let rendered = config::render_redacted(&s);
    for secret in [
        "app-secret-value",
        "EAAG-token-value",
        "verify-value",
        "api-token-value",
        "db-password-value",
    ] {
        assert!(!debug.contains(secret), "{secret} in Debug output");
        assert!(!rendered.contains(secret), "{secret} in rendered config");
    }
    assert!(
        rendered.contains("postgres://app:[redacted]@db:5432/chat"),
        "{rendered}"
    );
    assert!(rendered.contains("[redacted]"));
}

fn switchboard(args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SWITCHBOARD__")) {
        cmd.env_remove(k);
    }
    cmd.envs(vars.iter().copied());
    cmd.output().unwrap()
}

#[test]
fn config_check_prints_the_effective_configuration_redacted_and_exits_zero() {
    let f = file("[whatsapp]\naccess_token = \"EAAG-very-secret\"\n");
    let out = switchboard(
        &["config", "check", "--config", f.path().to_str().unwrap()],
        &[("SWITCHBOARD__DATABASE__MAX_CONNECTIONS", "7")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("max_connections = 7"), "{stdout}");
    assert!(
        stdout.contains("database.max_connections"),
        "names the override: {stdout}"
    );
    assert!(!stdout.contains("EAAG-very-secret"), "{stdout}");
    assert!(stdout.contains("access_token = \"[redacted]\""), "{stdout}");
}

#[test]
fn config_check_prints_the_errors_and_exits_non_zero() {
    let f = file("[server]\nbnd = \"x\"\n");
    let out = switchboard(&["config", "check", "--config", f.path().to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bnd") && stderr.contains("line 2"), "{stderr}");
}
