//! The environment a step runs with. A step does not inherit the agent's environment (which
//! may hold credentials the agent needs and a step must not see): the child's environment is
//! cleared and built from, later entries winning,
//!
//! 1. `PATH` (the agent's, or `--step-path`), `HOME` (the attempt's own directory, so steps
//!    share no dotfiles between attempts and read none of the operator's) and `LANG=C.UTF-8`;
//! 2. the agent's variables named by `--pass-env NAME` (or `TOLLGATE_AGENT_PASS_ENV`), those
//!    the agent has;
//! 3. the plan step's `env`;
//! 4. Tollgate's own `TOLLGATE_*` variables, which nothing overrides.

use std::ffi::OsString;
use std::path::Path;

/// `PATH` for steps when the agent has none and no `--step-path` was given.
pub const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The locale every step runs with, so parsed output does not depend on the node's locale.
pub const STEP_LANG: &str = "C.UTF-8";

/// What a step's environment is built from besides its plan and Tollgate's variables; built
/// once from the agent's own environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepEnvironment {
    /// `PATH` a step sees.
    path: String,
    /// The allowlisted variables the agent has, in allowlist order.
    passed: Vec<(String, String)>,
}

impl StepEnvironment {
    /// From `agent_env` (the agent's variables), `step_path` (`--step-path`) and `pass_env`
    /// (the `--pass-env` names). A name the agent does not have, or whose value is not UTF-8,
    /// is left out.
    pub fn new(
        agent_env: impl IntoIterator<Item = (OsString, OsString)>,
        step_path: Option<&str>,
        pass_env: &[String],
    ) -> Self {
        let agent_env: std::collections::HashMap<OsString, OsString> =
            agent_env.into_iter().collect();
        let text = |name: &str| {
            agent_env
                .get(std::ffi::OsStr::new(name))
                .and_then(|value| value.to_str())
                .map(str::to_owned)
        };
        let path = step_path
            .map(str::to_owned)
            .or_else(|| text("PATH"))
            .unwrap_or_else(|| FALLBACK_PATH.to_owned());
        let mut passed: Vec<(String, String)> = Vec::new();
        for name in pass_env {
            if passed.iter().any(|(seen, _)| seen == name) {
                continue;
            }
            match text(name) {
                Some(value) => passed.push((name.clone(), value)),
                None => tracing::debug!(
                    name,
                    "--pass-env names a variable the agent does not have (or not as UTF-8); steps do not get it"
                ),
            }
        }
        Self { path, passed }
    }

    /// From this process's environment.
    pub fn of_agent(step_path: Option<&str>, pass_env: &[String]) -> Self {
        Self::new(std::env::vars_os(), step_path, pass_env)
    }

    /// The variables under the plan's and Tollgate's (steps 1 and 2 of the module docs), for
    /// an attempt whose own directory is `home`.
    pub fn base(&self, home: &Path) -> Vec<(String, String)> {
        let mut env = vec![
            ("PATH".to_owned(), self.path.clone()),
            ("HOME".to_owned(), home.display().to_string()),
            ("LANG".to_owned(), STEP_LANG.to_owned()),
        ];
        env.extend(self.passed.iter().cloned());
        env
    }
}

/// Checks a `--pass-env` name: a non-empty variable name without `=` or NUL.
pub fn check_pass_env_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(format!(
            "--pass-env '{name}' is not a variable name: give a name without '=' (the value is \
             read from the agent's environment)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn only_path_home_lang_and_allowlisted_variables_are_kept() {
        let agent = vars(&[
            ("PATH", "/opt/bin:/usr/bin"),
            ("HOME", "/root"),
            ("SECRET", "hunter2"),
            ("ALLOWED", "yes"),
        ]);
        let environment = StepEnvironment::new(
            agent,
            None,
            &["ALLOWED".into(), "MISSING".into(), "ALLOWED".into()],
        );
        assert_eq!(
            environment.base(Path::new("/state/attempt-1")),
            vec![
                ("PATH".to_owned(), "/opt/bin:/usr/bin".to_owned()),
                ("HOME".to_owned(), "/state/attempt-1".to_owned()),
                ("LANG".to_owned(), "C.UTF-8".to_owned()),
                ("ALLOWED".to_owned(), "yes".to_owned()),
            ]
        );
    }

    #[test]
    fn step_path_replaces_the_agents_and_a_missing_path_falls_back() {
        let with_flag = StepEnvironment::new(vars(&[("PATH", "/agent")]), Some("/steps"), &[]);
        assert_eq!(with_flag.base(Path::new("/h"))[0].1, "/steps");
        let without = StepEnvironment::new(vars(&[]), None, &[]);
        assert_eq!(without.base(Path::new("/h"))[0].1, FALLBACK_PATH);
    }

    #[test]
    fn pass_env_names_are_checked() {
        assert!(check_pass_env_name("CUDA_HOME").is_ok());
        for bad in ["", "A=B", "A\0B"] {
            let error = check_pass_env_name(bad).unwrap_err();
            assert!(error.contains("--pass-env"), "{error}");
        }
    }
}
