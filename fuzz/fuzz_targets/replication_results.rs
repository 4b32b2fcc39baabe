//! Result sets built from fuzz bytes (decoded backend messages fed into SimpleQuery), run
//! through every replication result parser: errors are fine, panics are not.
#![no_main]

use bytes::BytesMut;
use klio_proto::base_backup::{BackupPosition, Tablespace};
use klio_proto::replication::{
    CreateSlotResult, EndOfTimeline, IdentifySystem, ReadReplicationSlot, TimelineHistory,
    parse_size_setting, show_value,
};
use klio_proto::{BackendDecoder, ResultSet, SimpleQuery};
use libfuzzer_sys::fuzz_target;

fn parse_all(set: &ResultSet) {
    let _ = IdentifySystem::from_result(set);
    let _ = ReadReplicationSlot::from_result(set);
    let _ = TimelineHistory::from_result(set);
    let _ = CreateSlotResult::from_result(set);
    let _ = EndOfTimeline::from_result(set);
    let _ = BackupPosition::from_result(set);
    let _ = Tablespace::list_from_result(set);
    if let Ok(v) = show_value(set) {
        let _ = parse_size_setting(&v);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut dec = BackendDecoder::with_max_message_len(64 * 1024);
    let mut buf = BytesMut::from(data);
    let mut query = SimpleQuery::new();
    while let Ok(Some(msg)) = dec.decode(&mut buf) {
        match query.handle(msg) {
            Ok(Some(result)) => result.sets.iter().for_each(parse_all),
            Ok(None) => {}
            Err(_) => query = SimpleQuery::new(),
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_size_setting(s);
    }
});
