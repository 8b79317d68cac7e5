//! Every message a replica takes from clients and peers: decoded as it
//! arrives and converted to domain types, it is an error or checked values.
//! The first byte picks the message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mindoo_replica::proto::{self, convert};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => {
            if let Ok(m) = proto::HeadResponse::decode(bytes) {
                let _ = convert::head(m);
            }
        }
        1 => {
            if let Ok(m) = proto::LogBatch::decode(bytes) {
                let _ = convert::log_batch(m);
            }
        }
        2 => {
            if let Ok(m) = proto::EntryBatch::decode(bytes) {
                let _ = convert::entry_chunk(m);
            }
        }
        3 => {
            if let Ok(m) = proto::PutEntriesResponse::decode(bytes) {
                let statuses = m.status.len();
                assert_eq!(convert::put_outcomes(m).len(), statuses);
            }
        }
        4 => {
            if let Ok(w) = proto::WatchRequest::decode(bytes) {
                let _ = convert::follow_request(
                    w.cursor,
                    w.include_data,
                    w.live_data,
                    w.namespaces,
                    w.heartbeat_ms,
                    w.relay_delay_ms,
                );
            }
        }
        5 => {
            if let Ok(m) = proto::MissingIdsRequest::decode(bytes) {
                let _ = convert::namespace(m.namespace);
                if let Ok(ids) = convert::ids(m.ids, 10_000) {
                    assert!(ids.len() <= 10_000);
                }
            }
        }
        6 => {
            if let Ok(m) = proto::ConfirmRequest::decode(bytes) {
                let _ = convert::cursor(m.cursor);
                for ns in m.namespaces {
                    let _ = convert::namespace(Some(ns));
                }
            }
        }
        _ => {
            if let Ok(m) = proto::PutEntriesRequest::decode(bytes) {
                if let Ok((_, concern)) = convert::put_entries(m) {
                    assert!(concern.replicas >= 1);
                }
            }
        }
    }
});
