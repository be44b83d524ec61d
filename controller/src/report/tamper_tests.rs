//! Tamper tests: real reports, rendered by the real renderer in every format, edited at every
//! offset class (before the first byte, each section and each boundary between sections, each
//! marker, inside the signature region, the signature value, after the last byte) by inserting,
//! deleting and changing bytes, whitespace and line ends included. Every edited report must be
//! rejected; an edit inside one section of the body must be named by that section.

use super::tests::{input, test_key};
use super::{ReportFormat, render};
use std::collections::BTreeSet;
use std::ops::Range;
use tollgate_domain::report_signature as signature;

const FORMATS: [ReportFormat; 4] = [
    ReportFormat::Markdown,
    ReportFormat::Json,
    ReportFormat::Html,
    ReportFormat::Junit,
];

fn rendered(format: ReportFormat) -> String {
    String::from_utf8(render(&input(), format, &test_key()).content).expect("reports are UTF-8")
}

/// The offset classes every format is edited at (the JSON region is one line, so it has no
/// line ends).
const REQUIRED_CLASSES: [&str; 13] = [
    "before the first byte",
    "a section boundary",
    "a section's second byte",
    "inside a section",
    "a section's last byte",
    "a marker's first byte",
    "inside a marker",
    "a marker's last byte",
    "inside the region",
    "the signature value's first byte",
    "inside the signature value",
    "the last byte",
    "after the last byte",
];

/// Where the parts of a rendered report lie, found from its text and its signature block.
struct Anatomy {
    /// Each section of the body: its name and its bytes in the file.
    sections: Vec<(String, Range<usize>)>,
    /// The signature region.
    region: Range<usize>,
    /// The signature value (hex) inside the region.
    value: Range<usize>,
    /// Every marker of the region's layout.
    markers: Vec<Range<usize>>,
}

fn anatomy(format: ReportFormat, text: &str) -> Anatomy {
    let extracted = signature::extract(text).expect("a rendered report has a signature block");
    let (before, after) = extracted.body;
    let region = before.len()..text.len() - after.len();
    // The body's sections run through the part before the region, then the part after it.
    let mut sections = Vec::new();
    let mut offset = 0;
    for section in &extracted.block.sections {
        let n = usize::try_from(section.n_bytes).expect("a test report is small");
        let start = if offset >= before.len() {
            offset - before.len() + region.end
        } else {
            offset
        };
        assert!(
            offset >= before.len() || offset + n <= before.len(),
            "{format:?}: section `{}` straddles the region",
            section.name
        );
        sections.push((section.name.clone(), start..start + n));
        offset += n;
    }
    assert_eq!(offset, before.len() + after.len(), "{format:?}");
    let value_hex = &extracted.block.signature;
    assert_eq!(
        text.matches(value_hex.as_str()).count(),
        1,
        "{format:?}: the signature value occurs once"
    );
    let value_start = text.find(value_hex.as_str()).expect("counted above");
    let value = value_start..value_start + value_hex.len();
    let junit_property = format!(
        r#"<property name="{}" value=""#,
        signature::JUNIT_SIGNATURE_PROPERTY
    );
    let marker_texts: &[&str] = match format {
        ReportFormat::Json => &[signature::JSON_REGION_BEGIN],
        ReportFormat::Markdown => &[
            signature::REGION_BEGIN,
            signature::MARKDOWN_SIGNATURE_OPEN,
            signature::MARKDOWN_CLOSE,
            signature::REGION_END,
        ],
        ReportFormat::Html => &[
            signature::REGION_BEGIN,
            signature::HTML_SIGNATURE_OPEN,
            signature::HTML_CLOSE,
            signature::REGION_END,
        ],
        ReportFormat::Junit => &[
            signature::REGION_BEGIN,
            junit_property.as_str(),
            signature::REGION_END,
        ],
    };
    let markers = marker_texts
        .iter()
        .map(|marker| {
            let at = region.start
                + text[region.clone()]
                    .find(marker)
                    .unwrap_or_else(|| panic!("{format:?}: no {marker:?} in the region"));
            at..at + marker.len()
        })
        .collect();
    Anatomy {
        sections,
        region,
        value,
        markers,
    }
}

/// The offsets at which to edit, each with its class, on char boundaries.
fn offsets(text: &str, anatomy: &Anatomy) -> BTreeSet<(usize, &'static str)> {
    let mut offsets = BTreeSet::new();
    let mut add = |offset: usize, class: &'static str| {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset += 1;
        }
        offsets.insert((offset, class));
    };
    add(0, "before the first byte");
    add(text.len() - 1, "the last byte");
    add(text.len(), "after the last byte");
    for (_, range) in &anatomy.sections {
        add(range.start, "a section boundary");
        add(range.start + 1, "a section's second byte");
        add(range.start + range.len() / 2, "inside a section");
        add(
            range.end.saturating_sub(1).max(range.start),
            "a section's last byte",
        );
    }
    for marker in &anatomy.markers {
        add(marker.start.saturating_sub(1), "before a marker");
        add(marker.start, "a marker's first byte");
        add(marker.start + marker.len() / 2, "inside a marker");
        add(marker.end - 1, "a marker's last byte");
        add(marker.end, "after a marker");
    }
    let region = &anatomy.region;
    for offset in region.clone().step_by(29) {
        add(offset, "inside the region");
    }
    for (idx, _) in text[region.clone()].match_indices('\n') {
        add(region.start + idx, "a line end in the region");
        add(region.start + idx + 1, "a line start in the region");
    }
    let value = &anatomy.value;
    add(value.start - 1, "before the signature value");
    add(value.start, "the signature value's first byte");
    add(value.start + value.len() / 2, "inside the signature value");
    add(value.end - 1, "the signature value's last byte");
    add(value.end, "after the signature value");
    offsets
}

/// One edit: its name and the edited text.
fn edits(text: &str, offset: usize) -> Vec<(String, String)> {
    let mut edits = vec![
        ("insert `X`".to_owned(), splice(text, offset, 0, "X")),
        ("insert a space".to_owned(), splice(text, offset, 0, " ")),
        ("insert a newline".to_owned(), splice(text, offset, 0, "\n")),
    ];
    if let Some(c) = text[offset..].chars().next() {
        edits.push((
            format!("delete {c:?}"),
            splice(text, offset, c.len_utf8(), ""),
        ));
        let other = match c {
            'X' => "Y",
            '\n' => "\r\n",
            ' ' => "\t",
            _ => "X",
        };
        edits.push((
            format!("change {c:?} to {other:?}"),
            splice(text, offset, c.len_utf8(), other),
        ));
    }
    edits
}

fn splice(text: &str, at: usize, n_remove: usize, insert: &str) -> String {
    let mut out = String::with_capacity(text.len() + insert.len());
    out.push_str(&text[..at]);
    out.push_str(insert);
    out.push_str(&text[at + n_remove..]);
    out
}

/// The body section whose interior `offset` is, for an edit named `edit`: one whose bytes
/// before and after the edit cannot belong to a neighbour.
fn interior_section<'a>(anatomy: &'a Anatomy, offset: usize, edit: &str) -> Option<&'a str> {
    anatomy.sections.iter().find_map(|(name, range)| {
        let inside = if edit.starts_with("change") && !edit.contains("\\r\\n") {
            range.contains(&offset)
        } else {
            // An insertion or deletion at a section's edge could be read as its neighbour's.
            range.start < offset && offset + 1 < range.end
        };
        inside.then_some(name.as_str())
    })
}

#[test]
fn every_edit_at_every_offset_class_is_rejected_in_every_format() {
    let key = test_key().verifying_key();
    for format in FORMATS {
        let text = rendered(format);
        signature::verify(&text, Some(&key))
            .unwrap_or_else(|error| panic!("{format:?}: the untouched report: {error}"));
        let anatomy = anatomy(format, &text);
        let mut classes = BTreeSet::new();
        for (offset, class) in offsets(&text, &anatomy) {
            classes.insert(class);
            for (edit, edited) in edits(&text, offset) {
                let context = &text[offset.saturating_sub(20)..(offset + 20).min(text.len())];
                let error = match signature::verify(&edited, Some(&key)) {
                    Ok(_) => panic!(
                        "{format:?}: {edit} at byte {offset} ({class}, near {context:?}) still verifies"
                    ),
                    Err(error) => error.to_string(),
                };
                if let Some(section) = interior_section(&anatomy, offset, &edit) {
                    assert!(
                        error.contains(&format!("changed section `{section}`")),
                        "{format:?}: {edit} at byte {offset} ({class}, near {context:?}) inside `{section}`: {error}"
                    );
                }
            }
        }
        for class in REQUIRED_CLASSES {
            assert!(
                classes.contains(class),
                "{format:?}: no edit at {class}: {classes:?}"
            );
        }
    }
}

/// Forgeries placed inside the signature region, where a reader sees them but the body's
/// sections do not reach.
#[test]
fn forged_content_inside_the_signature_region_is_rejected() {
    let key = test_key().verifying_key();
    let html_overlay = r#"<div style="position:fixed;inset:0;z-index:9999;background:#fff"><h1>PASSED</h1><script>document.title = "PASSED"</script></div>"#;
    let forgeries = [
        (
            ReportFormat::Html,
            signature::REGION_BEGIN,
            html_overlay.to_owned(),
        ),
        (
            ReportFormat::Html,
            signature::HTML_CLOSE,
            html_overlay.to_owned(),
        ),
        (
            ReportFormat::Markdown,
            signature::REGION_BEGIN,
            "\n# FORGED\n\n**Verdict: PASSED**\n".to_owned(),
        ),
        (
            ReportFormat::Markdown,
            signature::MARKDOWN_CLOSE,
            "\n# FORGED\n".to_owned(),
        ),
        (
            ReportFormat::Junit,
            "</properties>",
            r#"<testcase name="forged"><failure message="forged"/></testcase>"#.to_owned(),
        ),
        (
            ReportFormat::Junit,
            signature::REGION_BEGIN,
            r#"<testsuite name="forged" tests="1" failures="1"><testcase name="forged"><failure/></testcase></testsuite>"#.to_owned(),
        ),
        (
            ReportFormat::Json,
            signature::JSON_REGION_BEGIN,
            r#""forged":"passed","#.to_owned(),
        ),
    ];
    for (format, after, forgery) in forgeries {
        let text = rendered(format);
        let region_start = match format {
            ReportFormat::Json => text.rfind(signature::JSON_REGION_BEGIN),
            _ => text.rfind(signature::REGION_BEGIN),
        }
        .expect("a signature region");
        let at = region_start
            + text[region_start..]
                .find(after)
                .unwrap_or_else(|| panic!("{format:?}: no {after:?} in the region"))
            + after.len();
        let forged = splice(&text, at, 0, &forgery);
        let error = match signature::verify(&forged, Some(&key)) {
            Ok(_) => panic!("{format:?}: {forgery:?} after {after:?} still verifies"),
            Err(error) => error.to_string(),
        };
        // The first byte that differs from the signed layout lies within the forgery.
        let named = error
            .split_once("the signature region was changed at byte ")
            .and_then(|(_, rest)| rest.split_once(' '))
            .and_then(|(byte, _)| byte.parse::<usize>().ok());
        assert!(
            named.is_some_and(|byte| (at..=at + forgery.len()).contains(&byte)),
            "{format:?}: {forgery:?} after {after:?} at byte {at}: the error names the region and where: {error}"
        );
    }
}
