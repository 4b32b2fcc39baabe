#![no_main]
//! Retention reports (`RetentionReport` JSON) come to the client from the network: any bytes
//! must give a report or a clear error, never a panic. A report that parses writes back to
//! JSON that parses to the same report.

use klio_proto::klio::RetentionReport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = RetentionReport::from_json(data) {
        let again = RetentionReport::from_json(&report.to_json()).expect("a written report reads");
        assert_eq!(again, report);
    }
});
