//! Writing a report node by node. Each node's detail is laid out as soon as its evidence
//! arrives, hashed as a section of the signature and put in a spool (memory for small
//! reports, an anonymous temporary file for fleet-sized ones); once every node has been
//! seen, the summary and the other sections that come first are written, then the spooled
//! nodes, then the rest and the signature. Memory holds one node's detail, the counters and
//! one row per node for the node table; never the fleet.

use super::ReportHead;
use super::layout::Layout;
use super::model::Builder;
use crate::store::NodeEvidence;
use ed25519_dalek::SigningKey;
use std::io::{self, BufWriter, Read as _, Seek as _, Write};
use tollgate_domain::gate::RunEvidence;
use tollgate_domain::report_signature::{self as signature, Section, Subject};

/// Where node details wait until the summary is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolKind {
    /// In memory: for small reports and tests.
    Memory,
    /// In an anonymous temporary file, removed when the report is done: for fleet-sized
    /// reports, whose node details run to tens of megabytes.
    TempFile,
}

enum Spool {
    Memory(Vec<u8>),
    File(BufWriter<std::fs::File>),
}

impl Spool {
    fn new(kind: SpoolKind) -> io::Result<Self> {
        Ok(match kind {
            SpoolKind::Memory => Self::Memory(Vec::new()),
            SpoolKind::TempFile => {
                Self::File(BufWriter::with_capacity(1 << 20, tempfile::tempfile()?))
            }
        })
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Memory(buffer) => {
                buffer.extend_from_slice(bytes);
                Ok(())
            }
            Self::File(file) => file.write_all(bytes),
        }
    }

    fn copy_to(self, out: &mut impl Write) -> io::Result<()> {
        match self {
            Self::Memory(buffer) => out.write_all(&buffer),
            Self::File(file) => {
                let mut file = file.into_inner().map_err(io::IntoInnerError::into_error)?;
                file.rewind()?;
                let mut buffer = vec![0; 1 << 20];
                loop {
                    let n = file.read(&mut buffer)?;
                    if n == 0 {
                        return Ok(());
                    }
                    out.write_all(&buffer[..n])?;
                }
            }
        }
    }
}

/// A report being written to `W`.
pub struct Renderer<W: Write> {
    layout: &'static dyn Layout,
    builder: Builder,
    spool: Spool,
    node_sections: Vec<Section>,
    buffer: String,
    subject: Subject,
    out: W,
}

/// What [`Renderer::finish`] wrote.
#[derive(Debug)]
pub struct Written<W> {
    /// The writer, flushed.
    pub out: W,
    /// Bytes written.
    pub n_bytes: u64,
}

/// Counts what passes through to `W`.
struct Counting<'a, W> {
    out: &'a mut W,
    n_bytes: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.out.write(bytes)?;
        self.n_bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> Renderer<W> {
    /// Starts a report of `head` laid out by `layout`, to be written to `out` once every node
    /// is in. Crate-only: the layouts are the report module's own.
    pub(crate) fn new(
        head: ReportHead,
        layout: &'static dyn Layout,
        out: W,
        spool: SpoolKind,
    ) -> io::Result<Self> {
        let subject = Subject {
            release: head.release.id.to_string(),
            milestone: head.milestone.clone(),
            decision_digest: head.decision.digest.clone(),
            verdict: head.decision.verdict.as_str().to_owned(),
        };
        Ok(Self {
            layout,
            builder: Builder::new(head),
            spool: Spool::new(spool)?,
            node_sections: Vec::new(),
            buffer: String::with_capacity(256 * 1024),
            subject,
            out,
        })
    }

    /// Adds a warning about the input, shown with the summary.
    pub fn warn(&mut self, warning: String) {
        self.builder.report.warnings.push(warning);
    }

    /// The runs the evidence comes from; before the first node.
    pub fn runs(&mut self, runs: Vec<RunEvidence>) {
        self.builder.set_runs(runs);
    }

    /// Lays out the next node (nodes come by name) and spools it.
    pub fn node(&mut self, evidence: &NodeEvidence) -> io::Result<()> {
        let idx = self.builder.rows.len();
        let node = self.builder.node(evidence);
        self.buffer.clear();
        self.layout
            .node(&self.builder.report, idx, &node, &mut self.buffer);
        self.spool.write(self.buffer.as_bytes())?;
        self.node_sections.push(signature::section(
            format!("node {}", node.name),
            self.buffer.as_bytes(),
        ));
        Ok(())
    }

    /// Writes the report: the head, the spooled nodes, the tail, the signature region signed
    /// with `key`, and the suffix.
    pub fn finish(mut self, key: &SigningKey) -> io::Result<Written<W>> {
        self.builder.finish();
        let report = &self.builder.report;
        let mut out = Counting {
            out: &mut self.out,
            n_bytes: 0,
        };
        let mut sections = Vec::with_capacity(self.node_sections.len() + 32);
        for (name, text) in self.layout.head(report, &self.builder.rows) {
            out.write_all(text.as_bytes())?;
            sections.push(signature::section(name, text.as_bytes()));
        }
        self.spool.copy_to(&mut out)?;
        sections.append(&mut self.node_sections);
        for (name, text) in self.layout.tail(report) {
            out.write_all(text.as_bytes())?;
            sections.push(signature::section(name, text.as_bytes()));
        }
        let suffix = self.layout.suffix();
        sections.push(signature::section("end", suffix.as_bytes()));
        let format = self.layout.format();
        let block = signature::sign(key, format, self.subject, sections);
        out.write_all(signature::region(format, &block).as_bytes())?;
        out.write_all(suffix.as_bytes())?;
        out.flush()?;
        let n_bytes = out.n_bytes;
        Ok(Written {
            out: self.out,
            n_bytes,
        })
    }
}
