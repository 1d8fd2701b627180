//! Packet capture as pcap files: a [`Port`] decorator that records what a port sees, in
//! smoltcp's manner of wrapping any device ([`Pcap`]), and the writer that turns frames a
//! live [`Tap`](super::tap::Tap) captured into a file ([`CaptureWriter`], [`write_pcap`]).
//!
//! Both write classic pcap with Ethernet link type and microsecond timestamps, which every
//! tool reads (tcpdump, Wireshark, scapy). Classic pcap has no direction field: received
//! and transmitted frames share one stream in the order the port saw them.
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, PcapError, TsResolution};

use super::tap::CapturedFrame;
use super::{DescBatch, FrameDesc, FrameMemory, FreeList, Port, PortFrames, SegmentId};
use crate::worker::WorkerPort;

/// The snaplen written in the file header: tcpdump's largest, above any frame a port can
/// carry, so that no frame is refused and readers accept every record's original length.
pub const PCAP_SNAPLEN: u32 = 262_144;

/// The header of every file written here: Ethernet, microseconds, native byte order.
fn header() -> PcapHeader {
    PcapHeader {
        snaplen: PCAP_SNAPLEN,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::native(),
        ..PcapHeader::default()
    }
}

/// The I/O error inside a pcap error, or the pcap error as invalid data (a record that does
/// not fit the format), so callers deal with one error type.
fn io_error(e: PcapError) -> io::Error {
    match e {
        PcapError::IoError(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

/// Time since the epoch, the default clock of [`Pcap`].
fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Which frames a [`Pcap`] records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PcapMode {
    /// Received and transmitted frames.
    #[default]
    Both,
    /// Only frames received from the port.
    RxOnly,
    /// Only frames transmitted to the port.
    TxOnly,
}

/// Wraps a port and writes every frame it receives and every frame it accepts for transmit
/// to a pcap stream: for tests and simulations, where the port and the file are owned by one
/// thread. (A running dataplane uses [`Tap`](super::tap::Tap), which does not write from
/// the worker.)
///
/// A write error never reaches the dataplane: it is counted ([`Pcap::write_errors`]) and the
/// port goes on. Writes are unbuffered unless `W` buffers (a `BufWriter` flushes when
/// dropped or once taken back with [`Pcap::into_parts`]).
pub struct Pcap<P, W: Write> {
    inner: P,
    /// None once the header could not be written (the writer is then lost).
    writer: Option<PcapWriter<W>>,
    mode: PcapMode,
    clock: Box<dyn FnMut() -> Duration + Send>,
    write_errors: u64,
}

impl<P, W: Write> Pcap<P, W> {
    /// Wraps `inner`, recording both directions to `writer` with wall-clock timestamps. The
    /// file header is written now; if that fails the error is counted and nothing more is
    /// written.
    pub fn new(inner: P, writer: W) -> Self {
        let (writer, write_errors) = match PcapWriter::with_header(writer, header()) {
            Ok(w) => (Some(w), 0),
            Err(_) => (None, 1),
        };
        Self {
            inner,
            writer,
            mode: PcapMode::Both,
            clock: Box::new(wall_clock),
            write_errors,
        }
    }

    /// Records only the frames `mode` names.
    pub fn with_mode(mut self, mode: PcapMode) -> Self {
        self.mode = mode;
        self
    }

    /// Takes timestamps (time since the epoch) from `clock` rather than the wall clock: a
    /// simulation's virtual time, or fixed times for reproducible files.
    pub fn with_clock(mut self, clock: impl FnMut() -> Duration + Send + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// Frames (and the header) that could not be written.
    pub fn write_errors(&self) -> u64 {
        self.write_errors
    }

    /// The wrapped port.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The wrapped port, mutably (to inject frames into an in-memory port).
    pub fn inner_mut(&mut self) -> &mut P {
        &mut self.inner
    }

    /// The port and the writer (None when the header could not be written), to read or
    /// flush what was recorded.
    pub fn into_parts(self) -> (P, Option<W>) {
        (self.inner, self.writer.map(PcapWriter::into_writer))
    }

    /// Writes the frames `descs` names, all stamped with one reading of the clock.
    fn record<M: FrameMemory>(&mut self, mem: &M, descs: &[FrameDesc]) {
        if descs.is_empty() {
            return;
        }
        let Some(writer) = &mut self.writer else {
            self.write_errors += descs.len() as u64;
            return;
        };
        let at = (self.clock)();
        for d in descs {
            let data = mem.bytes(d.addr, d.len as usize);
            if writer
                .write_packet(&PcapPacket::new(at, d.len, data))
                .is_err()
            {
                self.write_errors += 1;
            }
        }
    }
}

impl<M: FrameMemory, P: Port<M>, W: Write> Port<M> for Pcap<P, W> {
    fn fill(&mut self, mem: &mut M, free: &mut FreeList) {
        self.inner.fill(mem, free)
    }

    fn receive(&mut self, mem: &mut M, out: &mut DescBatch) {
        let start = out.len();
        self.inner.receive(mem, out);
        if self.mode != PcapMode::TxOnly {
            let descs = out.as_slice().get(start..).unwrap_or(&[]);
            self.record(mem, descs);
        }
    }

    fn transmit(&mut self, mem: &mut M, batch: &mut DescBatch) {
        if self.mode == PcapMode::RxOnly {
            return self.inner.transmit(mem, batch);
        }
        // The port takes frames from the front; remember them to record those it accepted
        // (their bytes stay in place until their completion).
        let mut queued = [FrameDesc::default(); DescBatch::CAPACITY];
        let n = batch.len();
        queued[..n].copy_from_slice(batch.as_slice());
        self.inner.transmit(mem, batch);
        let accepted = n.saturating_sub(batch.len());
        self.record(mem, &queued[..accepted]);
    }

    fn complete(&mut self, free: &mut FreeList) {
        self.inner.complete(free)
    }

    fn frames_held(&self) -> PortFrames {
        self.inner.frames_held()
    }

    fn segment(&self) -> SegmentId {
        self.inner.segment()
    }
}

impl<M: FrameMemory, P: WorkerPort<M>, W: Write + Send> WorkerPort<M> for Pcap<P, W> {
    fn wait_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.inner.wait_fd()
    }

    fn needs_visit(&self) -> bool {
        self.inner.needs_visit()
    }

    fn starved(&self) -> u64 {
        self.inner.starved()
    }

    fn close(self) -> Vec<u64> {
        self.inner.close()
    }
}

/// Writes frames a [`Tap`](super::tap::Tap) captured as a pcap stream, one at a time as they
/// arrive: what `bridgewall capture -w FILE.pcap` produces.
pub struct CaptureWriter<W: Write> {
    writer: PcapWriter<W>,
}

impl<W: Write> CaptureWriter<W> {
    /// Writes the file header to `writer`.
    pub fn new(writer: W) -> io::Result<Self> {
        Ok(Self {
            writer: PcapWriter::with_header(writer, header()).map_err(io_error)?,
        })
    }

    /// Appends one captured frame.
    pub fn write(&mut self, frame: &CapturedFrame) -> io::Result<()> {
        self.write_frame(frame.at_unix_ns, frame.orig_len, &frame.data)
    }

    /// Appends one frame given by its parts, for a client that received them in another form
    /// (the control API's stream): `data` is the captured part of a frame of `orig_len`
    /// bytes seen at `at_unix_ns`. An `orig_len` shorter than `data` is invalid data.
    pub fn write_frame(&mut self, at_unix_ns: u64, orig_len: u32, data: &[u8]) -> io::Result<()> {
        let packet = PcapPacket::new(Duration::from_nanos(at_unix_ns), orig_len, data);
        self.writer
            .write_packet(&packet)
            .map(drop)
            .map_err(io_error)
    }

    /// The underlying writer, to flush or close it.
    pub fn into_inner(self) -> W {
        self.writer.into_writer()
    }
}

/// Writes `frames` as a whole pcap stream to `writer` and hands the writer back (to flush
/// it): the one-call form of [`CaptureWriter`].
pub fn write_pcap<'a, W: Write>(
    writer: W,
    frames: impl IntoIterator<Item = &'a CapturedFrame>,
) -> io::Result<W> {
    let mut w = CaptureWriter::new(writer)?;
    for f in frames {
        w.write(f)?;
    }
    Ok(w.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phy::HeapFrames;
    use crate::phy::memory::{MemoryPort, MemoryPortConfig};
    use crate::phy::tap::Direction;
    use pcap_file::pcap::PcapReader;

    /// Every packet of a pcap stream: (timestamp, orig_len, data).
    fn read_back(bytes: &[u8]) -> Vec<(Duration, u32, Vec<u8>)> {
        let mut r = PcapReader::new(bytes).unwrap();
        let h = r.header();
        assert_eq!(h.datalink, DataLink::ETHERNET);
        assert_eq!(h.ts_resolution, TsResolution::MicroSecond);
        let mut out = Vec::new();
        while let Some(p) = r.next_packet() {
            let p = p.unwrap();
            out.push((p.timestamp, p.orig_len, p.data.into_owned()));
        }
        out
    }

    /// A clock that ticks one second per reading, from 1000 s.
    fn ticking() -> impl FnMut() -> Duration + Send {
        let mut t = 999;
        move || {
            t += 1;
            Duration::from_secs(t)
        }
    }

    #[test]
    fn received_and_accepted_frames_are_written_in_order() {
        let mut mem = HeapFrames::new(16, 2048);
        let mut free = FreeList::full(16, 2048);
        let port = MemoryPort::new(MemoryPortConfig {
            ring_size: 2,
            fill_share: 2,
            ..Default::default()
        });
        let mut port = Pcap::new(port, Vec::new()).with_clock(ticking());
        port.fill(&mut mem, &mut free);
        assert!(port.inner_mut().inject(&[1; 60]));
        assert!(port.inner_mut().inject(&[2; 70]));
        let mut batch = DescBatch::default();
        port.receive(&mut mem, &mut batch);
        assert_eq!(batch.len(), 2);
        // A third frame, then the order 3, 1, 2: a TX ring of 2 accepts 3 and 1.
        let addr = free.pop().unwrap();
        mem.bytes_mut(addr, 80).fill(3);
        batch.push(FrameDesc { addr, len: 80 }).unwrap();
        batch.as_mut_slice().rotate_right(1);
        port.transmit(&mut mem, &mut batch);
        assert_eq!(batch.len(), 1);
        assert_eq!(
            Port::<HeapFrames>::frames_held(&port).tx,
            2,
            "frames_held is the port's"
        );
        assert_eq!(Port::<HeapFrames>::segment(&port), 0);
        assert_eq!(port.write_errors(), 0);

        let (_, file) = port.into_parts();
        let got = read_back(&file.unwrap());
        let secs = Duration::from_secs;
        assert_eq!(
            got,
            [
                (secs(1000), 60, vec![1; 60]),
                (secs(1000), 70, vec![2; 70]),
                (secs(1001), 80, vec![3; 80]),
                (secs(1001), 60, vec![1; 60]),
            ]
        );
    }

    #[test]
    fn modes_pick_a_direction() {
        for (mode, want) in [
            (PcapMode::RxOnly, 1),
            (PcapMode::TxOnly, 1),
            (PcapMode::Both, 2),
        ] {
            let mut mem = HeapFrames::new(8, 2048);
            let mut free = FreeList::full(8, 2048);
            let mut port =
                Pcap::new(MemoryPort::new(MemoryPortConfig::default()), Vec::new()).with_mode(mode);
            port.fill(&mut mem, &mut free);
            port.inner_mut().inject(&[1; 60]);
            let mut batch = DescBatch::default();
            port.receive(&mut mem, &mut batch);
            port.transmit(&mut mem, &mut batch);
            assert!(batch.is_empty());
            let (_, file) = port.into_parts();
            assert_eq!(read_back(&file.unwrap()).len(), want, "{mode:?}");
        }
    }

    /// Accepts `room` bytes, then fails every write.
    struct Full {
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::other("disk full"));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_errors_are_counted_and_frames_still_flow() {
        for (room, errors) in [(0, 1 + 2 + 2), (24, 2 + 2)] {
            let mut mem = HeapFrames::new(8, 2048);
            let mut free = FreeList::full(8, 2048);
            let mut port = Pcap::new(MemoryPort::new(MemoryPortConfig::default()), Full { room });
            port.fill(&mut mem, &mut free);
            port.inner_mut().inject(&[1; 60]);
            port.inner_mut().inject(&[2; 60]);
            let mut batch = DescBatch::default();
            port.receive(&mut mem, &mut batch);
            assert_eq!(batch.len(), 2);
            port.transmit(&mut mem, &mut batch);
            assert!(batch.is_empty());
            assert_eq!(port.write_errors(), errors, "room {room}");
            assert_eq!(port.inner_mut().take_sent().len(), 2);
        }
    }

    #[test]
    fn a_pcap_port_is_a_worker_port() {
        fn worker_port<P: WorkerPort<HeapFrames>>(p: P) -> Vec<u64> {
            p.close()
        }
        let mut mem = HeapFrames::new(8, 2048);
        let mut free = FreeList::full(8, 2048);
        let mut port = Pcap::new(MemoryPort::new(MemoryPortConfig::default()), Vec::new());
        port.fill(&mut mem, &mut free);
        assert!(WorkerPort::<HeapFrames>::needs_visit(&port));
        assert!(WorkerPort::<HeapFrames>::wait_fd(&port).is_none());
        assert_eq!(worker_port(port).len() + free.len(), 8, "every frame back");
    }

    #[test]
    fn captured_frames_round_trip_through_write_pcap() {
        let frames = [
            CapturedFrame {
                direction: Direction::In,
                at_unix_ns: 1_700_000_000_123_456_789,
                orig_len: 60,
                data: vec![0xaa; 60],
            },
            CapturedFrame {
                direction: Direction::Out,
                at_unix_ns: 1_700_000_001_000_000_999,
                orig_len: 1514,
                data: vec![0xbb; 64],
            },
        ];
        let file = write_pcap(Vec::new(), &frames).unwrap();
        let got = read_back(&file);
        assert_eq!(
            got,
            [
                (
                    Duration::new(1_700_000_000, 123_456_000),
                    60,
                    vec![0xaa; 60]
                ),
                (Duration::new(1_700_000_001, 0), 1514, vec![0xbb; 64]),
            ]
        );
        // An empty capture is a valid file with no packets.
        assert!(read_back(&write_pcap(Vec::new(), []).unwrap()).is_empty());
    }

    #[test]
    fn capture_writer_reports_errors() {
        assert!(CaptureWriter::new(Full { room: 0 }).is_err());
        let mut w = CaptureWriter::new(Vec::new()).unwrap();
        let e = w.write_frame(0, 10, &[0; 20]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "longer than orig_len");
        let mut w = CaptureWriter::new(Full { room: 24 }).unwrap();
        assert!(w.write_frame(0, 10, &[0; 10]).is_err());
    }
}
