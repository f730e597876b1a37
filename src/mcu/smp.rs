//! The MCUmgr Simple Management Protocol (SMP) on the wire: the 8-byte header, CBOR
//! bodies for the OS group (echo, reset, MCUmgr parameters) and the image group
//! (state read/write, upload, erase), and both error forms (SMP v1 `{"rc": n}` and
//! SMP v2 `{"err": {"group": g, "rc": n}}`) turned into readable messages.
//!
//! Both directions are here (request builders and parsers, response builders and
//! parsers), so the client and the test simulator speak through one codec; the PyPI
//! `smpclient` tests keep that codec honest against an independent implementation.
//! Nothing in this module does I/O.

use ciborium::Value;
use std::fmt;

/// Length of the SMP header that precedes every CBOR body.
pub const HEADER_LEN: usize = 8;
/// The header's body length is a u16; no SMP packet can be larger than this.
pub const MAX_PACKET: usize = HEADER_LEN + u16::MAX as usize;

/// Group ids (SMP header bytes 4-5).
pub const GROUP_OS: u16 = 0;
pub const GROUP_IMAGE: u16 = 1;

/// OS group command ids.
pub const OS_ECHO: u8 = 0;
pub const OS_RESET: u8 = 5;
pub const OS_PARAMS: u8 = 6;

/// Image group command ids.
pub const IMG_STATE: u8 = 0;
pub const IMG_UPLOAD: u8 = 1;
pub const IMG_ERASE: u8 = 5;

/// Generic MCUmgr result codes (the `rc` of SMP v1, `MGMT_ERR_*`).
pub const RC_OK: i64 = 0;
pub const RC_UNKNOWN: i64 = 1;
pub const RC_EINVAL: i64 = 3;
pub const RC_ENOENT: i64 = 5;
pub const RC_EBADSTATE: i64 = 6;
pub const RC_ENOTSUP: i64 = 8;
pub const RC_ECORRUPT: i64 = 9;
pub const RC_EBUSY: i64 = 10;
/// The device answered a v2 request with "my protocol is older": retry in v1.
pub const RC_UNSUPPORTED_TOO_NEW: i64 = 13;

/// Image group (v2) result codes that the relay and the simulator use.
pub const IMG_ERR_NO_FREE_SLOT: i64 = 9;
pub const IMG_ERR_INVALID_SLOT: i64 = 14;
pub const IMG_ERR_INVALID_OFFSET: i64 = 20;
pub const IMG_ERR_INVALID_LENGTH: i64 = 21;
pub const IMG_ERR_INVALID_IMAGE_HEADER: i64 = 22;
pub const IMG_ERR_INVALID_IMAGE_HEADER_MAGIC: i64 = 23;
pub const IMG_ERR_INVALID_HASH: i64 = 24;
pub const IMG_ERR_HASH_NOT_FOUND: i64 = 8;
pub const IMG_ERR_IMAGE_TOO_LARGE: i64 = 30;
pub const IMG_ERR_DATA_OVERRUN: i64 = 31;

/// Header byte 0 bits 0-2: the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read = 0,
    ReadResponse = 1,
    Write = 2,
    WriteResponse = 3,
}

impl Op {
    fn from_bits(bits: u8) -> Option<Op> {
        match bits {
            0 => Some(Op::Read),
            1 => Some(Op::ReadResponse),
            2 => Some(Op::Write),
            3 => Some(Op::WriteResponse),
            _ => None,
        }
    }

    /// The response op that answers this request op.
    pub fn response(self) -> Op {
        match self {
            Op::Read | Op::ReadResponse => Op::ReadResponse,
            Op::Write | Op::WriteResponse => Op::WriteResponse,
        }
    }

    pub fn is_response(self) -> bool {
        matches!(self, Op::ReadResponse | Op::WriteResponse)
    }
}

/// One SMP command: operation, group and command id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmd {
    pub op: Op,
    pub group: u16,
    pub id: u8,
}

impl Cmd {
    pub const ECHO: Cmd = Cmd {
        op: Op::Write,
        group: GROUP_OS,
        id: OS_ECHO,
    };
    pub const RESET: Cmd = Cmd {
        op: Op::Write,
        group: GROUP_OS,
        id: OS_RESET,
    };
    pub const PARAMS: Cmd = Cmd {
        op: Op::Read,
        group: GROUP_OS,
        id: OS_PARAMS,
    };
    pub const IMAGE_STATE_READ: Cmd = Cmd {
        op: Op::Read,
        group: GROUP_IMAGE,
        id: IMG_STATE,
    };
    pub const IMAGE_STATE_WRITE: Cmd = Cmd {
        op: Op::Write,
        group: GROUP_IMAGE,
        id: IMG_STATE,
    };
    pub const IMAGE_UPLOAD: Cmd = Cmd {
        op: Op::Write,
        group: GROUP_IMAGE,
        id: IMG_UPLOAD,
    };
    pub const IMAGE_ERASE: Cmd = Cmd {
        op: Op::Write,
        group: GROUP_IMAGE,
        id: IMG_ERASE,
    };
}

/// Header byte 0 bits 3-4: the SMP protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The original protocol: errors as `{"rc": n}`.
    V1 = 0,
    /// Zephyr 3.3+: group-specific errors as `{"err": {"group": g, "rc": n}}`.
    V2 = 1,
}

/// The 8-byte SMP header (multi-byte fields big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub op: Op,
    pub version: Version,
    pub flags: u8,
    /// Length of the CBOR body that follows.
    pub len: u16,
    pub group: u16,
    pub seq: u8,
    pub cmd: u8,
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let [l0, l1] = self.len.to_be_bytes();
        let [g0, g1] = self.group.to_be_bytes();
        [
            (self.op as u8) | ((self.version as u8) << 3),
            self.flags,
            l0,
            l1,
            g0,
            g1,
            self.seq,
            self.cmd,
        ]
    }

    pub fn parse(buf: &[u8]) -> Result<Header, SmpError> {
        if buf.len() < HEADER_LEN {
            return Err(SmpError(format!(
                "packet of {} bytes is shorter than the {HEADER_LEN}-byte SMP header",
                buf.len()
            )));
        }
        let op = Op::from_bits(buf[0] & 0x07).ok_or_else(|| {
            SmpError(format!(
                "unknown SMP op {} in header byte 0x{:02x}",
                buf[0] & 0x07,
                buf[0]
            ))
        })?;
        let version = match (buf[0] >> 3) & 0x03 {
            0 => Version::V1,
            1 => Version::V2,
            v => {
                return Err(SmpError(format!(
                    "unsupported SMP version {v} in header byte 0x{:02x}",
                    buf[0]
                )))
            }
        };
        Ok(Header {
            op,
            version,
            flags: buf[1],
            len: u16::from_be_bytes([buf[2], buf[3]]),
            group: u16::from_be_bytes([buf[4], buf[5]]),
            seq: buf[6],
            cmd: buf[7],
        })
    }
}

/// A malformed packet or body (the peer broke the protocol).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SmpError(pub String);

/// A decoded SMP packet: header and CBOR body (always a map).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub header: Header,
    pub body: Value,
}

/// Encodes one packet: header + CBOR body. The body must fit the u16 length field.
pub fn encode(
    op: Op,
    version: Version,
    group: u16,
    cmd: u8,
    seq: u8,
    body: &Value,
) -> Result<Vec<u8>, SmpError> {
    let mut cbor = Vec::new();
    ciborium::into_writer(body, &mut cbor)
        .map_err(|e| SmpError(format!("cannot encode CBOR body: {e}")))?;
    let len = u16::try_from(cbor.len()).map_err(|_| {
        SmpError(format!(
            "CBOR body of {} bytes exceeds the SMP limit of 65535",
            cbor.len()
        ))
    })?;
    let header = Header {
        op,
        version,
        flags: 0,
        len,
        group,
        seq,
        cmd,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + cbor.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(&cbor);
    Ok(out)
}

/// Decodes one packet; the header length must match the bytes present and the body
/// must be one CBOR map.
pub fn decode(packet: &[u8]) -> Result<Message, SmpError> {
    let header = Header::parse(packet)?;
    let body = &packet[HEADER_LEN..];
    if body.len() != header.len as usize {
        return Err(SmpError(format!(
            "SMP header announces a {}-byte body but {} bytes follow (group {}, command {}, sequence {})",
            header.len,
            body.len(),
            header.group,
            header.cmd,
            header.seq
        )));
    }
    let value: Value = if body.is_empty() {
        Value::Map(Vec::new())
    } else {
        ciborium::from_reader(body).map_err(|e| {
            SmpError(format!(
                "bad CBOR body (group {}, command {}): {e}",
                header.group, header.cmd
            ))
        })?
    };
    if !matches!(value, Value::Map(_)) {
        return Err(SmpError(format!(
            "CBOR body of group {} command {} is not a map",
            header.group, header.cmd
        )));
    }
    Ok(Message {
        header,
        body: value,
    })
}

// ---------------------------------------------------------------------------------
// Errors reported by the device

/// An error the device reported in a response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceError {
    /// `Some(group)` for the SMP v2 form, `None` for a v1 `rc`.
    pub group: Option<u16>,
    pub rc: i64,
    /// Optional human text some servers add (`"rsn"`).
    pub reason: Option<String>,
}

impl DeviceError {
    /// True for the generic "that command is not supported" answers.
    pub fn is_not_supported(&self) -> bool {
        self.group.is_none() && self.rc == RC_ENOTSUP
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.group {
            None => write!(f, "rc {} ({})", self.rc, mgmt_err_text(self.rc))?,
            Some(g) => write!(
                f,
                "{} group error {} ({})",
                group_name(g),
                self.rc,
                group_err_text(g, self.rc)
            )?,
        }
        if let Some(r) = &self.reason {
            write!(f, ": {r}")?;
        }
        Ok(())
    }
}

/// Name of a management group for messages.
pub fn group_name(group: u16) -> String {
    match group {
        0 => "OS".into(),
        1 => "image".into(),
        2 => "statistics".into(),
        3 => "settings".into(),
        4 => "log".into(),
        5 => "crash".into(),
        8 => "file system".into(),
        9 => "shell".into(),
        63 => "Zephyr basic".into(),
        g => format!("group {g}"),
    }
}

/// Text of the generic MCUmgr result codes.
pub fn mgmt_err_text(rc: i64) -> &'static str {
    match rc {
        0 => "ok",
        1 => "unknown error",
        2 => "out of memory",
        3 => "invalid value",
        4 => "timeout",
        5 => "no such entry",
        6 => "bad state",
        7 => "message too large",
        8 => "not supported",
        9 => "corrupt",
        10 => "busy",
        11 => "access denied",
        12 => "protocol version too old for the device",
        13 => "protocol version too new for the device",
        256.. => "application-defined error",
        _ => "unrecognised code",
    }
}

/// Text of group-specific (SMP v2) result codes.
pub fn group_err_text(group: u16, rc: i64) -> &'static str {
    match (group, rc) {
        (_, 0) => "ok",
        (_, 1) => "unknown error",
        (GROUP_OS, 2) => "invalid format",
        (GROUP_OS, 3) => "query yields no answer",
        (GROUP_OS, 4) => "RTC not set",
        (GROUP_OS, 5) => "RTC command failed",
        (GROUP_OS, 6) => "query response value not valid",
        (GROUP_IMAGE, 2) => "flash configuration query failed",
        (GROUP_IMAGE, 3) => "no image",
        (GROUP_IMAGE, 4) => "no TLVs",
        (GROUP_IMAGE, 5) => "invalid TLV",
        (GROUP_IMAGE, 6) => "multiple hash TLVs",
        (GROUP_IMAGE, 7) => "invalid TLV size",
        (GROUP_IMAGE, 8) => "hash not found",
        (GROUP_IMAGE, 9) => "no free slot",
        (GROUP_IMAGE, 10) => "flash open failed",
        (GROUP_IMAGE, 11) => "flash read failed",
        (GROUP_IMAGE, 12) => "flash write failed",
        (GROUP_IMAGE, 13) => "flash erase failed",
        (GROUP_IMAGE, 14) => "invalid slot",
        (GROUP_IMAGE, 15) => "no free memory",
        (GROUP_IMAGE, 16) => "flash context already set",
        (GROUP_IMAGE, 17) => "flash context not set",
        (GROUP_IMAGE, 18) => "flash area device null",
        (GROUP_IMAGE, 19) => "invalid page offset",
        (GROUP_IMAGE, 20) => "invalid offset",
        (GROUP_IMAGE, 21) => "invalid length",
        (GROUP_IMAGE, 22) => "invalid image header",
        (GROUP_IMAGE, 23) => "invalid image header magic",
        (GROUP_IMAGE, 24) => "invalid hash",
        (GROUP_IMAGE, 25) => "invalid flash address",
        (GROUP_IMAGE, 26) => "version get failed",
        (GROUP_IMAGE, 27) => "current version is newer",
        (GROUP_IMAGE, 28) => "image already pending",
        (GROUP_IMAGE, 29) => "invalid image vector table",
        (GROUP_IMAGE, 30) => "image too large",
        (GROUP_IMAGE, 31) => "image data overrun",
        (GROUP_IMAGE, 32) => "image confirmation denied",
        (GROUP_IMAGE, 33) => "setting test to active image denied",
        (GROUP_IMAGE, 34) => "active slot not known",
        _ => "unrecognised code",
    }
}

/// Looks for either error form in a response body; `Ok(())` when there is none or
/// the code is 0.
pub fn check_error(body: &Value) -> Result<(), DeviceError> {
    let map = Map::of(body);
    let reason = map.text("rsn").map(str::to_owned);
    if let Some(err) = map.get("err") {
        let e = Map::of(err);
        let rc = e.int("rc").unwrap_or(RC_UNKNOWN as i128);
        let group = e
            .int("group")
            .and_then(|g| u16::try_from(g).ok())
            .unwrap_or(u16::MAX);
        if rc != 0 {
            return Err(DeviceError {
                group: Some(group),
                rc: clamp_rc(rc),
                reason,
            });
        }
    }
    if let Some(rc) = map.int("rc") {
        if rc != 0 {
            return Err(DeviceError {
                group: None,
                rc: clamp_rc(rc),
                reason,
            });
        }
    }
    Ok(())
}

fn clamp_rc(rc: i128) -> i64 {
    i64::try_from(rc).unwrap_or(i64::MAX)
}

/// Builds an error body in the form that matches `version` (used by the simulator).
pub fn error_body(version: Version, group: u16, rc: i64) -> Value {
    match version {
        Version::V1 => map(vec![("rc", Value::from(rc))]),
        Version::V2 => map(vec![(
            "err",
            map(vec![("group", Value::from(group)), ("rc", Value::from(rc))]),
        )]),
    }
}

// ---------------------------------------------------------------------------------
// CBOR map helpers

/// Builds a CBOR map with text keys in the given order.
pub fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::Text(k.to_owned()), v))
            .collect(),
    )
}

/// Read access to a CBOR map by text key; a non-map reads as empty.
#[derive(Debug, Clone, Copy)]
pub struct Map<'a>(&'a [(Value, Value)]);

impl<'a> Map<'a> {
    pub fn of(v: &'a Value) -> Map<'a> {
        match v {
            Value::Map(m) => Map(m.as_slice()),
            _ => Map(&[]),
        }
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.0
            .iter()
            .find(|(k, _)| matches!(k, Value::Text(t) if t == key))
            .map(|(_, v)| v)
    }

    pub fn int(&self, key: &str) -> Option<i128> {
        match self.get(key)? {
            Value::Integer(i) => Some(i128::from(*i)),
            _ => None,
        }
    }

    pub fn uint(&self, key: &str) -> Option<u64> {
        self.int(key).and_then(|i| u64::try_from(i).ok())
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn bytes(&self, key: &str) -> Option<&'a [u8]> {
        match self.get(key)? {
            Value::Bytes(b) => Some(b.as_slice()),
            _ => None,
        }
    }

    pub fn text(&self, key: &str) -> Option<&'a str> {
        match self.get(key)? {
            Value::Text(t) => Some(t.as_str()),
            _ => None,
        }
    }

    /// A required unsigned field, with a message naming it.
    pub fn req_uint(&self, key: &str, what: &str) -> Result<u64, SmpError> {
        match self.get(key) {
            None => Err(SmpError(format!("{what}: field \"{key}\" is missing"))),
            Some(Value::Integer(i)) => u64::try_from(i128::from(*i))
                .map_err(|_| SmpError(format!("{what}: field \"{key}\" is negative"))),
            Some(other) => Err(SmpError(format!(
                "{what}: field \"{key}\" is {}, not an integer",
                kind(other)
            ))),
        }
    }
}

/// CBOR type name for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) => "an integer",
        Value::Bytes(_) => "a byte string",
        Value::Float(_) => "a float",
        Value::Text(_) => "a text string",
        Value::Bool(_) => "a bool",
        Value::Null => "null",
        Value::Tag(..) => "a tagged value",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        _ => "an unknown CBOR item",
    }
}

// ---------------------------------------------------------------------------------
// OS group bodies

/// `{"d": text}`
pub fn echo_request(text: &str) -> Value {
    map(vec![("d", Value::Text(text.to_owned()))])
}

/// `{"r": text}` → text
pub fn echo_response(body: &Value) -> Result<String, SmpError> {
    Map::of(body)
        .text("r")
        .map(str::to_owned)
        .ok_or_else(|| SmpError("echo response has no text field \"r\"".into()))
}

/// The device's SMP buffer parameters (OS command 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Size of one SMP reassembly buffer: the largest packet the device accepts
    /// (for serial it also holds the 2-byte length and the 2-byte CRC).
    pub buf_size: u32,
    pub buf_count: u32,
}

impl Params {
    pub fn parse(body: &Value) -> Result<Params, SmpError> {
        let m = Map::of(body);
        let buf_size = m.req_uint("buf_size", "MCUmgr parameters")?;
        let buf_count = m.uint("buf_count").unwrap_or(1);
        Ok(Params {
            buf_size: u32::try_from(buf_size).unwrap_or(u32::MAX),
            buf_count: u32::try_from(buf_count).unwrap_or(u32::MAX),
        })
    }

    pub fn to_value(self) -> Value {
        map(vec![
            ("buf_size", Value::from(self.buf_size)),
            ("buf_count", Value::from(self.buf_count)),
        ])
    }
}

// ---------------------------------------------------------------------------------
// Image group bodies

/// One entry of the image state list.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct SlotState {
    /// Image number (multi-image devices); absent on the wire means 0.
    pub image: u32,
    pub slot: u32,
    pub version: String,
    /// The MCUboot hash TLV of the image in that slot.
    #[serde(serialize_with = "ser_hex")]
    pub hash: Vec<u8>,
    pub bootable: bool,
    pub pending: bool,
    pub confirmed: bool,
    pub active: bool,
    pub permanent: bool,
}

fn ser_hex<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

impl SlotState {
    fn parse(v: &Value, idx: usize) -> Result<SlotState, SmpError> {
        let m = Map::of(v);
        if !matches!(v, Value::Map(_)) {
            return Err(SmpError(format!(
                "image state entry {idx} is {}, not a map",
                kind(v)
            )));
        }
        let what = format!("image state entry {idx}");
        Ok(SlotState {
            image: u32::try_from(m.uint("image").unwrap_or(0)).unwrap_or(u32::MAX),
            slot: u32::try_from(m.req_uint("slot", &what)?).unwrap_or(u32::MAX),
            version: m.text("version").unwrap_or("").to_owned(),
            hash: m.bytes("hash").unwrap_or(&[]).to_vec(),
            bootable: m.bool("bootable").unwrap_or(false),
            pending: m.bool("pending").unwrap_or(false),
            confirmed: m.bool("confirmed").unwrap_or(false),
            active: m.bool("active").unwrap_or(false),
            permanent: m.bool("permanent").unwrap_or(false),
        })
    }

    /// The wire form (only true flags are sent, as Zephyr does).
    pub fn to_value(&self) -> Value {
        let mut e = vec![];
        if self.image != 0 {
            e.push(("image", Value::from(self.image)));
        }
        e.push(("slot", Value::from(self.slot)));
        e.push(("version", Value::Text(self.version.clone())));
        if !self.hash.is_empty() {
            e.push(("hash", Value::Bytes(self.hash.clone())));
        }
        for (k, b) in [
            ("bootable", self.bootable),
            ("pending", self.pending),
            ("confirmed", self.confirmed),
            ("active", self.active),
            ("permanent", self.permanent),
        ] {
            if b {
                e.push((k, Value::Bool(true)));
            }
        }
        map(e)
    }

    /// Flags as mcumgr prints them.
    pub fn flags(&self) -> String {
        let mut f = vec![];
        for (n, b) in [
            ("active", self.active),
            ("confirmed", self.confirmed),
            ("pending", self.pending),
            ("permanent", self.permanent),
            ("bootable", self.bootable),
        ] {
            if b {
                f.push(n);
            }
        }
        f.join(" ")
    }
}

/// Parses `{"images": [...], "splitStatus": n}` (state read and state write responses).
pub fn parse_image_states(body: &Value) -> Result<Vec<SlotState>, SmpError> {
    match Map::of(body).get("images") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| SlotState::parse(v, i))
            .collect(),
        Some(other) => Err(SmpError(format!(
            "image state: \"images\" is {}, not an array",
            kind(other)
        ))),
        None => Err(SmpError(
            "image state response has no \"images\" list".into(),
        )),
    }
}

/// Builds a state response body (used by the simulator).
pub fn image_states_body(slots: &[SlotState]) -> Value {
    map(vec![
        (
            "images",
            Value::Array(slots.iter().map(SlotState::to_value).collect()),
        ),
        ("splitStatus", Value::from(0)),
    ])
}

/// State write: `{"hash": h, "confirm": false}` to test an image, `{"confirm": true}`
/// (hash optional) to confirm.
pub fn image_state_write(hash: Option<&[u8]>, confirm: bool) -> Value {
    let mut e = vec![];
    if let Some(h) = hash {
        e.push(("hash", Value::Bytes(h.to_vec())));
    }
    e.push(("confirm", Value::Bool(confirm)));
    map(e)
}

/// One upload request (image group, command 1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UploadRequest {
    /// Image number; sent in the first chunk only.
    pub image: Option<u32>,
    /// Total length; first chunk only.
    pub len: Option<u64>,
    pub off: u64,
    /// SHA-256 of the whole upload; first chunk only. Identifies the upload session,
    /// which lets a device resume a broken transfer.
    pub sha: Option<Vec<u8>>,
    pub data: Vec<u8>,
    pub upgrade: Option<bool>,
}

impl UploadRequest {
    pub fn to_value(&self) -> Value {
        let mut e = vec![];
        if let Some(i) = self.image {
            e.push(("image", Value::from(i)));
        }
        if let Some(l) = self.len {
            e.push(("len", Value::from(l)));
        }
        e.push(("off", Value::from(self.off)));
        if let Some(s) = &self.sha {
            e.push(("sha", Value::Bytes(s.clone())));
        }
        e.push(("data", Value::Bytes(self.data.clone())));
        if let Some(u) = self.upgrade {
            e.push(("upgrade", Value::Bool(u)));
        }
        map(e)
    }

    pub fn parse(body: &Value) -> Result<UploadRequest, SmpError> {
        let m = Map::of(body);
        Ok(UploadRequest {
            image: m
                .uint("image")
                .map(|i| u32::try_from(i).unwrap_or(u32::MAX)),
            len: m.uint("len"),
            off: m.req_uint("off", "upload request")?,
            sha: m.bytes("sha").map(<[u8]>::to_vec),
            data: m
                .bytes("data")
                .ok_or_else(|| SmpError("upload request: field \"data\" is missing".into()))?
                .to_vec(),
            upgrade: m.bool("upgrade"),
        })
    }

    /// Encoded size of the CBOR body (to size chunks against the device buffer).
    pub fn encoded_len(&self) -> usize {
        let mut buf = Vec::new();
        // Writing into a Vec cannot fail; an error would only under-count, never panic.
        let _ = ciborium::into_writer(&self.to_value(), &mut buf);
        buf.len()
    }
}

/// Upload response: `{"off": next expected offset, "match": bool?}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadResponse {
    pub off: u64,
    /// Present on the last chunk when the device checked the `sha` of the upload.
    pub matched: Option<bool>,
}

impl UploadResponse {
    pub fn parse(body: &Value) -> Result<UploadResponse, SmpError> {
        let m = Map::of(body);
        Ok(UploadResponse {
            off: m.req_uint("off", "upload response")?,
            matched: m.bool("match"),
        })
    }

    pub fn to_value(self) -> Value {
        let mut e = vec![("off", Value::from(self.off))];
        if let Some(b) = self.matched {
            e.push(("match", Value::Bool(b)));
        }
        map(e)
    }
}

/// Erase: `{"slot": n}` (optional; the device picks the unused slot without it).
pub fn erase_request(slot: Option<u32>) -> Value {
    match slot {
        Some(s) => map(vec![("slot", Value::from(s))]),
        None => map(vec![]),
    }
}

/// Byte length of a CBOR byte-string head for `n` bytes of content.
pub fn bstr_head_len(n: usize) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_bit_layout() {
        let h = Header {
            op: Op::Write,
            version: Version::V2,
            flags: 0,
            len: 0x1234,
            group: 1,
            seq: 7,
            cmd: 1,
        };
        let b = h.to_bytes();
        assert_eq!(b, [0x0a, 0, 0x12, 0x34, 0, 1, 7, 1]);
        assert_eq!(Header::parse(&b).unwrap(), h);
    }

    #[test]
    fn matches_the_python_smp_example_packet() {
        // From the PyPI `smp` documentation: a v2 upload write request, sequence 154.
        let pkt = encode(
            Op::Write,
            Version::V2,
            GROUP_IMAGE,
            IMG_UPLOAD,
            154,
            &UploadRequest {
                image: Some(0),
                len: Some(13),
                off: 42,
                sha: Some(b"trust me bro".to_vec()),
                data: (0u8..64).collect(),
                upgrade: Some(false),
            }
            .to_value(),
        )
        .unwrap();
        assert_eq!(&pkt[..8], &[0x0a, 0x00, 0x00, 0x74, 0x00, 0x01, 0x9a, 0x01]);
        let msg = decode(&pkt).unwrap();
        let req = UploadRequest::parse(&msg.body).unwrap();
        assert_eq!(req.off, 42);
        assert_eq!(req.len, Some(13));
        assert_eq!(req.data.len(), 64);
    }

    #[test]
    fn both_error_forms_are_readable() {
        let v1 = error_body(Version::V1, GROUP_IMAGE, RC_ECORRUPT);
        let e = check_error(&v1).unwrap_err();
        assert_eq!(e.to_string(), "rc 9 (corrupt)");
        let v2 = error_body(Version::V2, GROUP_IMAGE, IMG_ERR_INVALID_IMAGE_HEADER_MAGIC);
        let e = check_error(&v2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "image group error 23 (invalid image header magic)"
        );
        assert!(check_error(&map(vec![("rc", Value::from(0))])).is_ok());
        assert!(check_error(&map(vec![("off", Value::from(10))])).is_ok());
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[0x0b, 0, 0, 0, 0, 1, 0, 0]).is_ok()); // empty body reads as {}
        assert!(decode(&[0x0b, 0, 0, 5, 0, 1, 0, 0, 0xa0]).is_err()); // length mismatch
        assert!(decode(&[0x0b, 0, 0, 1, 0, 1, 0, 0, 0x01]).is_err()); // body not a map
        assert!(decode(&[0x0b, 0, 0, 2, 0, 1, 0, 0, 0xbf, 0x61]).is_err()); // truncated CBOR
        assert!(decode(&[0x1f, 0, 0, 0, 0, 1, 0, 0]).is_err()); // version 3
        let states = map(vec![("images", Value::Array(vec![Value::from(3)]))]);
        assert!(parse_image_states(&states).is_err());
    }

    #[test]
    fn state_entries_roundtrip() {
        let s = SlotState {
            image: 0,
            slot: 1,
            version: "1.2.3".into(),
            hash: vec![1; 32],
            bootable: true,
            pending: true,
            ..Default::default()
        };
        let body = image_states_body(std::slice::from_ref(&s));
        assert_eq!(parse_image_states(&body).unwrap(), vec![s]);
    }

    #[test]
    fn encoded_len_grows_with_the_byte_string_head() {
        let mut r = UploadRequest {
            off: 0,
            data: vec![0; 23],
            ..Default::default()
        };
        let a = r.encoded_len();
        r.data = vec![0; 24];
        assert_eq!(r.encoded_len(), a + 2);
        assert_eq!(bstr_head_len(300), 3);
    }
}
