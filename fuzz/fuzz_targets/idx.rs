//! The IDX reader (MNIST's format, raw or gzip): images and labels.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linesweep_worker::data::idx;

fuzz_target!(|data: &[u8]| {
    if let Ok(images) = idx::parse_images(data, "fuzz-images-idx3-ubyte") {
        // What parses encodes back to a file that parses to the same images.
        let again = idx::parse_images(&idx::encode_images(&images), "again").unwrap();
        assert_eq!(
            (again.count, again.rows, again.cols),
            (images.count, images.rows, images.cols)
        );
    }
    for classes in [10, 1000] {
        let _ = idx::parse_labels(data, "fuzz-labels-idx1-ubyte", classes);
    }
});
