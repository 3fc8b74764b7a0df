//! PROXY protocol v1/v2 headers at the start of a connection: never a panic, a complete
//! header's length lies within the input, and the bytes after it do not change its meaning.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::proxy::client::parse_proxy_header;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((len, source))) = parse_proxy_header(data) {
        assert!(
            len > 0 && len <= data.len(),
            "header of {len} bytes in {}",
            data.len()
        );
        let alone = parse_proxy_header(&data[..len])
            .expect("the header alone is valid")
            .expect("the header alone is complete");
        assert_eq!(alone, (len, source));
    }
});
