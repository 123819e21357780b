#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _valid = isolation_policy_fuzz::check_one(data);
});
