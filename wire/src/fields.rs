//! The one way bad request fields are collected: [`FieldErrors`] while checking, then
//! [`InvalidFields`] naming every one. Checks of texts, lists and timestamps against
//! `tollgate_domain::limits` record into it, so an oversize value is refused by name and quoted
//! by a prefix, never echoed whole.

use tollgate_domain::limits::{self, Limit};
pub use tollgate_domain::release::FieldError;

/// How many problems one error message lists; the rest are counted. A request with a
/// hundred thousand bad entries must not make a message too large for the response.
pub const LISTED_PROBLEMS: usize = 20;

/// A message with bad fields; every one is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe_fields(.0))]
pub struct InvalidFields(pub Vec<FieldError>);

impl InvalidFields {
    /// Field paths, in the order found.
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.field.as_str()).collect()
    }
}

fn describe_fields(errors: &[FieldError]) -> String {
    let parts: Vec<String> = errors
        .iter()
        .take(LISTED_PROBLEMS)
        .map(ToString::to_string)
        .collect();
    let more = errors.len().saturating_sub(LISTED_PROBLEMS);
    let tail = if more > 0 {
        format!("; and {more} more")
    } else {
        String::new()
    };
    format!("invalid request: {}{tail}", parts.join("; "))
}

/// Collects field errors while a message is checked, so all of them are reported at once.
#[derive(Debug, Default)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is wrong.
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records errors found elsewhere (a domain validation).
    pub fn extend(&mut self, errors: impl IntoIterator<Item = FieldError>) {
        self.0.extend(errors);
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many errors are recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `value` if nothing was recorded, else every error.
    pub fn finish<T>(self, value: T) -> Result<T, InvalidFields> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(InvalidFields(self.0))
        }
    }

    /// Records a problem when `value` is longer than `limit` or holds a NUL byte
    /// (`limits::check_text`); `true` when it is fine.
    pub fn text(&mut self, field: &str, limit: &Limit, value: &str) -> bool {
        match limits::check_text(limit, value) {
            Ok(()) => true,
            Err(message) => {
                self.add(field, message);
                false
            }
        }
    }

    /// [`Self::texts`] for a list a person sends: each entry also non-blank, without NUL.
    pub fn clean_texts(&mut self, field: &str, list: &Limit, each: &Limit, values: &[String]) {
        if self.count(field, list, values.len()) {
            for (idx, value) in values.iter().enumerate() {
                let at = format!("{field}[{idx}]");
                if self.text(&at, each, value) {
                    self.non_blank(&at, value);
                }
            }
        }
    }

    /// Records a problem when a list of `n` entries is longer than `limit`; `true` when it
    /// fits. A list over its limit is refused whole: callers neither check nor keep its entries.
    pub fn count(&mut self, field: &str, limit: &Limit, n: usize) -> bool {
        match limits::check_count(limit, n) {
            Ok(()) => true,
            Err(message) => {
                self.add(field, message);
                false
            }
        }
    }

    /// Checks every entry of a list of texts: its length, then each entry.
    pub fn texts(&mut self, field: &str, list: &Limit, each: &Limit, values: &[String]) {
        if self.count(field, list, values.len()) {
            for (idx, value) in values.iter().enumerate() {
                self.text(&format!("{field}[{idx}]"), each, value);
            }
        }
    }

    /// Records a problem when `value` is not a finite number (NaN or infinite: JSON, and so
    /// the store, cannot hold it).
    pub fn finite(&mut self, field: &str, value: f64) {
        if !value.is_finite() {
            self.add(field, format!("{value} is not a finite number"));
        }
    }

    /// Records a problem when `value` is empty or only blanks.
    pub fn non_blank(&mut self, field: &str, value: &str) {
        if value.trim().is_empty() {
            self.add(field, "is empty");
        }
    }

    /// A list whose length fits `limit`, or an empty one (the problem recorded).
    pub fn within<T>(&mut self, field: &str, limit: &Limit, list: Vec<T>) -> Vec<T> {
        if self.count(field, limit, list.len()) {
            list
        } else {
            Vec::new()
        }
    }

    /// Parses a short keyword (a GPU source, a telemetry field, an event kind); one longer than
    /// a name is refused without being echoed whole by the parser's message.
    pub fn keyword<T: std::str::FromStr<Err = String>>(
        &mut self,
        field: &str,
        value: &str,
    ) -> Option<T> {
        let parsed = limits::check_text(&limits::NAME, value).and_then(|()| value.parse::<T>());
        parsed.map_err(|message| self.add(field, message)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_field_is_named_in_one_message() {
        let mut errors = FieldErrors::new();
        errors.add("name", "is empty");
        errors.add("components[1].version", "is empty");
        let invalid = errors.finish(()).expect_err("two problems");
        assert_eq!(invalid.fields(), ["name", "components[1].version"]);
        assert_eq!(
            invalid.to_string(),
            "invalid request: name: is empty; components[1].version: is empty"
        );
        assert_eq!(FieldErrors::new().finish(7), Ok(7));
    }

    #[test]
    fn many_bad_fields_are_listed_up_to_a_limit_then_counted() {
        let mut errors = FieldErrors::new();
        for idx in 0..100 {
            errors.add(format!("steps[{idx}]"), "is empty");
        }
        let text = errors.finish(()).expect_err("problems").to_string();
        assert!(text.ends_with("steps[19]: is empty; and 80 more"), "{text}");
    }

    #[test]
    fn an_oversize_keyword_is_refused_by_a_prefix() {
        let mut errors = FieldErrors::new();
        let huge = "x".repeat(1 << 20);
        let parsed: Option<tollgate_domain::fleet::GpuSourceKind> =
            errors.keyword("gpu_source", &huge);
        assert_eq!(parsed, None);
        let invalid = errors.finish(()).expect_err("refused");
        assert_eq!(invalid.fields(), ["gpu_source"]);
        assert!(invalid.to_string().len() < 1024);
    }
}
