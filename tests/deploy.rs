//! The deployment files stay loadable by pgshift as the code changes: the container image's
//! proxy.toml with the image's environment, and the compose stack's configuration with the compose
//! environment. No PostgreSQL needed. (deploy/check-container-env.sh and deploy/check-compose.sh
//! run them for real.)

use pgshift::config::Config;

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// `ENV` of the Dockerfile's runtime stage, as key/value pairs.
fn dockerfile_env() -> Vec<(String, String)> {
    let text = repo_file("Dockerfile").replace("\\\n", " ");
    let mut out = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("ENV ")) {
        for kv in line.split_whitespace() {
            let (k, v) = kv.split_once('=').expect("ENV key=value");
            out.push((k.to_string(), v.to_string()));
        }
    }
    out
}

#[test]
fn image_env_listens_everywhere_and_demands_a_token() {
    let env = dockerfile_env();
    assert!(env.contains(&("PGSHIFT_PROXY_LISTEN".into(), "0.0.0.0:6432".into())), "{env:?}");
    assert!(env.contains(&("PGSHIFT_ADMIN_LISTEN".into(), "0.0.0.0:6480".into())), "{env:?}");
    let text = repo_file("proxy.toml");

    let err = Config::from_toml_with_env(&text, env.clone()).unwrap_err();
    assert!(err.0.iter().any(|p| p.contains("token is required")), "{err}");

    let mut with_token = env;
    with_token.extend(vars(&[("PGSHIFT_ADMIN_TOKEN", "t"), ("PGSHIFT_PRIMARY_URL", "postgres://db:5432")]));
    let c = Config::from_toml_with_env(&text, with_token).unwrap();
    assert_eq!(c.proxy.listen, "0.0.0.0:6432");
    assert_eq!(c.primary.address(), "db:5432");
}

#[test]
fn compose_config_loads_with_the_compose_environment() {
    let mut env = dockerfile_env();
    env.extend(vars(&[
        ("PGSHIFT_PRIMARY_URL", "postgres://primary:5432"),
        ("PGSHIFT_REPLICAS", "replica:5432"),
        ("PGSHIFT_ADMIN_TOKEN", "dev"), // the compose file gives it as PGSHIFT_ADMIN_TOKEN_FILE
    ]));
    let c = Config::from_toml_with_env(&repo_file("deploy/proxy.compose.toml"), env).unwrap();
    assert_eq!(c.primary.address(), "primary:5432");
    assert_eq!(c.replicas.iter().map(|r| r.address()).collect::<Vec<_>>(), ["replica:5432"]);
    assert_eq!(c.auth.users[0].password_file.as_deref(), Some("/run/secrets/app_password"));
    let compose = repo_file("docker-compose.yml");
    for needle in [
        "PGSHIFT_PRIMARY_URL: postgres://primary:5432",
        "PGSHIFT_REPLICAS: replica:5432",
        "PGSHIFT_ADMIN_TOKEN_FILE: /run/secrets/pgshift_admin_token",
        "DATABASE_URL: postgres://app:app@pgshift:6432/app",
    ] {
        assert!(compose.contains(needle), "docker-compose.yml lost {needle:?}");
    }
}
