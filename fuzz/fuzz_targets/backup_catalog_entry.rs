#![no_main]
//! Catalog entries (`BackupInfo` JSON) are read back from disk by the server and from the
//! network by the client, the latter as `ListedBackup` (the entry and which tiers hold it):
//! any bytes must give an entry or a clear error, never a panic. An entry that parses writes
//! back to JSON that parses to the same entry.

use klio_proto::klio::{BackupInfo, ListedBackup};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = BackupInfo::from_json(data) {
        let again = BackupInfo::from_json(&info.to_json()).expect("a written entry reads");
        assert_eq!(again, info);
        let _ = info.order_key();
    }
    if let Ok(listed) = ListedBackup::from_json(data) {
        let again = ListedBackup::from_json(&listed.to_json()).expect("a written listing reads");
        assert_eq!(again, listed);
    }
});
