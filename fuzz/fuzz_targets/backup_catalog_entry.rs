#![no_main]
//! Catalog entries (`BackupInfo` JSON) are read back from disk by the server and from the
//! network by the client: any bytes must give an entry or a clear error, never a panic. An
//! entry that parses writes back to JSON that parses to the same entry.

use klio_proto::klio::BackupInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = BackupInfo::from_json(data) {
        let again = BackupInfo::from_json(&info.to_json()).expect("a written entry reads");
        assert_eq!(again, info);
        let _ = info.order_key();
    }
});
