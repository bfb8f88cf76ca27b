//! What tests rtgt and is not part of it: an iSCSI initiator whose oracle checks the target's
//! protocol (`initiator`), the load generator and the S3 volume benchmarks (`bench`, run by
//! `cargo xtask bench` through the `rtgt-bench` binary), a network emulator (`netem`: delay,
//! bandwidth, outages), the drivers of the fuzz targets (`fuzzing`) and the SDK's in-process
//! connection to an s3s service (`in_process_s3`). Tests, the simulator,
//! xtask and the fuzzer use it; the `rtgt` library and binary do not, so none of it ships.

pub mod bench;
pub mod fuzzing;
pub mod in_process_s3;
pub mod initiator;
pub mod netem;

pub use in_process_s3::InProcessS3;
