//! Where the CLI finds its controller and API token: `--token` (shows in `ps`: warned
//! about), `TOLLGATE_TOKEN`, `--token-file FILE`, then the config file's `token_file`
//! (`$XDG_CONFIG_HOME/tollgate/config.toml`, else `~/.config/tollgate/config.toml`, keys
//! `controller` and `token_file`). A token file readable by group or others is refused.

use anyhow::Context as _;
use std::path::{Path, PathBuf};

/// The config file's settings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Config {
    /// The controller URL.
    pub controller: Option<String>,
    /// The file holding the API token.
    pub token_file: Option<PathBuf>,
    /// The CA certificate to trust for an `https://` controller.
    pub ca_file: Option<PathBuf>,
}

/// Where the config file is: `$XDG_CONFIG_HOME/tollgate/config.toml`, else
/// `$HOME/.config/tollgate/config.toml`; `None` when neither variable is set.
pub fn config_path(xdg_config_home: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    match (xdg_config_home, home) {
        (Some(xdg), _) if !xdg.is_empty() => Some(Path::new(xdg).join("tollgate/config.toml")),
        (_, Some(home)) if !home.is_empty() => {
            Some(Path::new(home).join(".config/tollgate/config.toml"))
        }
        _ => None,
    }
}

/// Parses the config file: `key = "value"` lines, `#` comments and blank lines; keys
/// `controller` and `token_file`. An error names every bad line.
pub fn parse_config(text: &str) -> Result<Config, String> {
    let mut config = Config::default();
    let mut problems = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line.split_once('=').and_then(|(key, value)| {
            let value = value.trim();
            let value = value.strip_prefix('"')?.strip_suffix('"')?;
            Some((key.trim(), value.to_owned()))
        });
        match parsed {
            Some(("controller", value)) => config.controller = Some(value),
            Some(("token_file", value)) => config.token_file = Some(PathBuf::from(value)),
            Some(("ca_file", value)) => config.ca_file = Some(PathBuf::from(value)),
            Some((key, _)) => problems.push(format!(
                "line {}: unknown key '{key}' (use controller, token_file or ca_file)",
                idx + 1
            )),
            None => problems.push(format!("line {}: expected key = \"value\"", idx + 1)),
        }
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems.join("; "))
    }
}

/// Reads the config file at `path`; a missing file is an empty config.
pub fn read_config(path: &Path) -> anyhow::Result<Config> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_config(&text)
            .map_err(|err| anyhow::anyhow!("config file {}: {err}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(error) => Err(error).with_context(|| format!("reading config file {}", path.display())),
    }
}

/// Reads an API token from `path`: its first line, trimmed. Refused when group or others
/// may read the file.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    if metadata.permissions().mode() & 0o077 != 0 {
        anyhow::bail!(
            "token file {0} may be read by other users: run `chmod 600 {0}` first",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        anyhow::bail!(
            "token file {} is empty: put the secret `tollgate token create` printed on its first line",
            path.display()
        );
    }
    Ok(token)
}

/// The token sources, as given.
#[derive(Debug, Default)]
pub struct Sources {
    /// `--token`.
    pub flag: Option<String>,
    /// `TOLLGATE_TOKEN`.
    pub env: Option<String>,
    /// `--token-file`.
    pub file: Option<PathBuf>,
    /// The config file's `token_file`.
    pub config_file: Option<PathBuf>,
}

/// The token to send, from the first source given; warns on stderr about `--token`.
pub fn resolve_token(sources: Sources) -> anyhow::Result<Option<String>> {
    let nonempty = |value: Option<String>| value.filter(|value| !value.is_empty());
    if let Some(token) = nonempty(sources.flag) {
        eprintln!(
            "warning: --token shows the secret to every user of this host in `ps`; use \
             --token-file FILE (chmod 600) or TOLLGATE_TOKEN instead"
        );
        return Ok(Some(token));
    }
    if let Some(token) = nonempty(sources.env) {
        return Ok(Some(token));
    }
    match sources.file.or(sources.config_file) {
        Some(path) => read_token_file(&path).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_is_found_and_parsed_or_names_every_bad_line() {
        assert_eq!(
            config_path(Some("/x"), Some("/home/a")),
            Some(PathBuf::from("/x/tollgate/config.toml"))
        );
        assert_eq!(
            config_path(None, Some("/home/a")),
            Some(PathBuf::from("/home/a/.config/tollgate/config.toml"))
        );
        assert_eq!(config_path(None, None), None);
        let config = parse_config(
            "# mine\ncontroller = \"https://ctl:7800\"\ntoken_file = \"/home/a/.tg\"\nca_file = \"/etc/tg/ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(config.ca_file, Some(PathBuf::from("/etc/tg/ca.pem")));
        assert_eq!(config.controller.as_deref(), Some("https://ctl:7800"));
        assert_eq!(config.token_file, Some(PathBuf::from("/home/a/.tg")));
        let err = parse_config("colour = \"red\"\ncontroller\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn token_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_token_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "s3cret");
    }

    #[test]
    fn the_first_source_given_wins() {
        let token = resolve_token(Sources {
            env: Some("from-env".into()),
            file: Some(PathBuf::from("/nonexistent")),
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(token.as_deref(), Some("from-env"));
        assert_eq!(resolve_token(Sources::default()).unwrap(), None);
        assert!(
            resolve_token(Sources {
                file: Some(PathBuf::from("/nonexistent/token")),
                ..Sources::default()
            })
            .is_err()
        );
    }
}
