//! The signed manifest parser: any bytes either fail with an error or give a manifest
//! that validates the same way after a round trip through its TOML form.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rota::bundle::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::parse(data) else { return };
    let Ok(text) = m.to_toml() else { return };
    let again = Manifest::parse(text.as_bytes()).expect("a parsed manifest serializes to a parsable one");
    assert_eq!(m, again, "manifest round trip");
});
