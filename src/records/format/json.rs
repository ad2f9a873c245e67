//! The `json` record format: each queued record is one Kinesis record, its
//! data the event's JSON as it was shaped.

use crate::records::format::{RecordFormat, Wire};
use crate::records::queue::{Queue, RequestLimits};

pub struct Json;

impl RecordFormat for Json {
    /// As many records as fit the request, one wire record each.
    fn take(&self, queue: &mut Queue, limits: RequestLimits, _max_record: usize) -> Vec<Wire> {
        Wire::singles(queue.take_batch(limits))
    }

    fn pack(&self, queue: &mut Queue, room: usize) -> Option<Wire> {
        Wire::single_within(queue, room)
    }

    #[cfg(test)]
    fn decode(&self, data: &[u8]) -> Vec<Vec<u8>> {
        vec![data.to_vec()]
    }
}

#[cfg(test)]
mod tests {
    use crate::records::format::tests::{queue, L};
    use crate::records::format::{take, Format};

    #[test]
    fn json_is_one_record_per_event() {
        let mut q = queue(3, 50);
        let w = take(&mut q, L, &Format::Json.packer(None, None), 1024);
        assert_eq!(w.len(), 3);
        assert_eq!(w[1].data(), &*w[1].members[0].data);
    }
}
