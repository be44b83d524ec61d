//! Release YAML (`tollgate release create -f`) and `--component` specs: the CLI's parsing and
//! the controller's checks of the request it sends never panic, and a release the controller
//! accepts reads back the same from the wire.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::release_file::{parse_component, parse_release_file};
use tollgate_wire::{NewRelease, ToProto};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(request) = parse_release_file("release.yaml", text)
        && let Ok(release) = NewRelease::try_from(request)
    {
        let again = NewRelease::try_from(release.to_proto()).unwrap_or_else(|error| {
            panic!("an accepted release is refused on re-reading: {error}")
        });
        assert_eq!(again, release);
    }
    for line in text.lines() {
        if let Ok(component) = parse_component(line) {
            assert!(!component.name.is_empty() && !component.version.is_empty());
        }
    }
});
