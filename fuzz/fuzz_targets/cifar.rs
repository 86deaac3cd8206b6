//! The CIFAR-10 binary batch reader.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(split) = linesweep_worker::data::cifar::parse(data, "fuzz_batch.bin") {
        let per = split.shape.iter().product::<usize>();
        assert_eq!(split.features.len(), split.labels.len() * per);
    }
});
