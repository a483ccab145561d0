//! A reader for the small part of Python's pickle format that `torch.save` writes for a
//! `state_dict`, and the table of tensors it declares.
//!
//! candle's pickle reader indexes into tuples without checking their length (a crafted
//! `_rebuild_tensor_v2` call panics it) and allocates whatever length a string opcode declares, so
//! checkpoints, which users download from anywhere, are parsed here instead. Nothing in this
//! module allocates more than the pickle's own bytes justify: strings are sliced from the input,
//! containers grow one opcode at a time, nesting is capped, and copies made when a memoised list
//! or dict is modified are counted against a budget. No Python code is ever run; the only calls
//! understood are the handful that rebuild tensors and ordered dicts.

use std::collections::HashMap;
use std::rc::Rc;

/// Containers nested deeper than this are refused; a `state_dict` nests about six levels.
const MAX_DEPTH: u32 = 64;

/// The most container elements copied because a memoised list, tuple or dict was modified.
const MAX_COPIED_ITEMS: usize = 1 << 22;

/// A value of the pickle subset: no code runs, calls are kept as data.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    /// A bool or float: their values are never needed to find tensors, so they are not kept.
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    /// `module.name`, as written by the GLOBAL opcodes.
    Global(Rc<(String, String)>),
    Tuple(Rc<Node>),
    List(Rc<Node>),
    Dict(Rc<DictNode>),
    /// A REDUCE or NEWOBJ: `callable(*args)`, not evaluated.
    Call(Rc<Node>),
    /// A persistent id (how torch refers to a storage record in the zip).
    PersistentId(Rc<Node>),
}

/// The elements of a tuple, list, call (`[callable, args]`) or persistent id (`[id]`).
#[derive(Debug, Clone)]
pub(crate) struct Node {
    items: Vec<Value>,
    depth: u32,
}

/// The entries of a dict, in insertion order.
#[derive(Debug, Clone)]
pub(crate) struct DictNode {
    items: Vec<(Value, Value)>,
    depth: u32,
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(node) | Value::List(node) | Value::Call(node) => node.depth,
            Value::PersistentId(node) => node.depth,
            Value::Dict(dict) => dict.depth,
            _ => 0,
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Global(_) => "a class",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Call(_) => "a call",
            Value::PersistentId(_) => "a persistent id",
        }
    }
}

fn node(items: Vec<Value>) -> Result<Rc<Node>, String> {
    let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        return Err(format!("containers nested more than {MAX_DEPTH} deep"));
    }
    Ok(Rc::new(Node { items, depth }))
}

fn dict(items: Vec<(Value, Value)>) -> Result<Rc<DictNode>, String> {
    let depth = 1 + items
        .iter()
        .map(|(k, v)| k.depth().max(v.depth()))
        .max()
        .unwrap_or(0);
    if depth > MAX_DEPTH {
        return Err(format!("containers nested more than {MAX_DEPTH} deep"));
    }
    Ok(Rc::new(DictNode { items, depth }))
}

enum Slot {
    Mark,
    Value(Value),
}

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    stack: Vec<Slot>,
    memo: HashMap<u32, Value>,
    copied: usize,
}

/// Parses a pickle and returns the value its STOP opcode leaves on the stack.
///
/// Errors say what was wrong and at which byte; a well-formed pickle that uses opcodes beyond the
/// `torch.save` subset is reported as such, never guessed at.
pub(crate) fn parse(input: &[u8]) -> Result<Value, String> {
    let mut machine = Machine {
        input,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        copied: 0,
    };
    loop {
        let at = machine.pos;
        match machine.step() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(message) => return Err(format!("data.pkl byte {at}: {message}")),
        }
    }
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.input.len())
            .ok_or_else(|| {
                format!(
                    "needs {n} more bytes but only {} remain (truncated pickle?)",
                    self.input.len() - self.pos
                )
            })?;
        let bytes = &self.input[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn le_bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.input[self.pos..];
        let len = rest
            .iter()
            .take(1024)
            .position(|&b| b == b'\n')
            .ok_or("a GLOBAL name without its newline within 1024 bytes")?;
        let text = std::str::from_utf8(&rest[..len])
            .map_err(|_| "a GLOBAL name that is not UTF-8".to_string())?
            .to_string();
        self.pos += len + 1;
        Ok(text)
    }

    fn text(&mut self, len: u64) -> Result<Value, String> {
        let len = usize::try_from(len).map_err(|_| "a string longer than memory".to_string())?;
        let bytes = self.take(len)?;
        let text =
            std::str::from_utf8(bytes).map_err(|_| "a string that is not UTF-8".to_string())?;
        Ok(Value::Str(Rc::from(text)))
    }

    fn push(&mut self, value: Value) {
        self.stack.push(Slot::Value(value));
    }

    fn pop(&mut self) -> Result<Value, String> {
        match self.stack.pop() {
            Some(Slot::Value(value)) => Ok(value),
            Some(Slot::Mark) => Err("a MARK where a value was expected".into()),
            None => Err("pops an empty stack".into()),
        }
    }

    fn pop_to_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self
            .stack
            .iter()
            .rposition(|slot| matches!(slot, Slot::Mark))
            .ok_or("no MARK to pop to")?;
        let items = self
            .stack
            .split_off(mark + 1)
            .into_iter()
            .map(|slot| match slot {
                Slot::Value(value) => value,
                Slot::Mark => unreachable!("the last mark was found above"),
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        match self.stack.last_mut() {
            Some(Slot::Value(value)) => Ok(value),
            Some(Slot::Mark) => Err("a MARK where a value was expected".into()),
            None => Err("reads an empty stack".into()),
        }
    }

    /// Charges the copy that modifying a shared (memoised) container makes.
    fn charge(copied: &mut usize, shared: bool, len: usize) -> Result<(), String> {
        if shared {
            *copied += len;
            if *copied > MAX_COPIED_ITEMS {
                return Err(format!(
                    "modifies memoised containers so often that more than {MAX_COPIED_ITEMS} elements would be copied"
                ));
            }
        }
        Ok(())
    }

    fn append(&mut self, values: Vec<Value>) -> Result<(), String> {
        let copied = &mut self.copied;
        let top = match self.stack.last_mut() {
            Some(Slot::Value(value)) => value,
            _ => return Err("APPEND without a list below".into()),
        };
        let Value::List(list) = top else {
            return Err(format!("APPEND to {}, not a list", top.describe()));
        };
        Self::charge(copied, Rc::strong_count(list) > 1, list.items.len())?;
        let list = Rc::make_mut(list);
        for value in values {
            list.depth = list.depth.max(value.depth() + 1);
            list.items.push(value);
        }
        if list.depth > MAX_DEPTH {
            return Err(format!("containers nested more than {MAX_DEPTH} deep"));
        }
        Ok(())
    }

    fn set_items(&mut self, values: Vec<Value>) -> Result<(), String> {
        if !values.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of keys and values".into());
        }
        let copied = &mut self.copied;
        let top = match self.stack.last_mut() {
            Some(Slot::Value(value)) => value,
            _ => return Err("SETITEM without a dict below".into()),
        };
        let Value::Dict(entries) = top else {
            return Err(format!("SETITEM on {}, not a dict", top.describe()));
        };
        Self::charge(copied, Rc::strong_count(entries) > 1, entries.items.len())?;
        let entries = Rc::make_mut(entries);
        let mut values = values.into_iter();
        while let (Some(key), Some(value)) = (values.next(), values.next()) {
            entries.depth = entries.depth.max(key.depth().max(value.depth()) + 1);
            entries.items.push((key, value));
        }
        if entries.depth > MAX_DEPTH {
            return Err(format!("containers nested more than {MAX_DEPTH} deep"));
        }
        Ok(())
    }

    fn memo_put(&mut self, id: u32) -> Result<(), String> {
        let value = self.top()?.clone();
        self.memo.insert(id, value);
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> Result<(), String> {
        let value = self
            .memo
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("memo entry {id} read before it was written"))?;
        self.push(value);
        Ok(())
    }

    fn call(&mut self, callable: Value, args: Value) -> Result<Value, String> {
        if let Value::Global(global) = &callable {
            let is_empty = matches!(&args, Value::Tuple(t) if t.items.is_empty());
            if global.0 == "collections" && global.1 == "OrderedDict" && is_empty {
                return Ok(Value::Dict(dict(Vec::new())?));
            }
        }
        Ok(Value::Call(node(vec![callable, args])?))
    }

    /// Runs one opcode; returns the result at STOP.
    fn step(&mut self) -> Result<Option<Value>, String> {
        let opcode = self.byte()?;
        match opcode {
            0x80 => {
                let protocol = self.byte()?;
                if protocol > 5 {
                    return Err(format!("pickle protocol {protocol} (at most 5 is known)"));
                }
            }
            // FRAME: a hint of the next frame's length, nothing to do.
            0x95 => {
                self.take(8)?;
            }
            b'.' => {
                let value = self.pop()?;
                return Ok(Some(value));
            }
            b'(' => self.stack.push(Slot::Mark),
            b'0' => {
                self.stack.pop().ok_or("POP on an empty stack")?;
            }
            b'1' => {
                self.pop_to_mark()?;
            }
            b'2' => {
                let value = self.top()?.clone();
                self.push(value);
            }
            b'N' => self.push(Value::None),
            0x88 | 0x89 => self.push(Value::Bool),
            b'K' => {
                let value = self.byte()?;
                self.push(Value::Int(value.into()));
            }
            b'M' => {
                let value = u16::from_le_bytes(self.le_bytes()?);
                self.push(Value::Int(value.into()));
            }
            b'J' => {
                let value = i32::from_le_bytes(self.le_bytes()?);
                self.push(Value::Int(value.into()));
            }
            0x8a => {
                let len = self.byte()? as usize;
                if len > 8 {
                    return Err(format!("a {len}-byte integer (at most 8 bytes are read)"));
                }
                let bytes = self.take(len)?;
                let mut value: i64 = 0;
                for (i, &b) in bytes.iter().enumerate() {
                    value |= (b as i64) << (8 * i);
                }
                // Two's complement of `len` bytes: sign-extend from the top byte.
                if (1..8).contains(&len) && bytes[len - 1] & 0x80 != 0 {
                    value -= 1i64 << (8 * len);
                }
                self.push(Value::Int(value));
            }
            b'G' => {
                self.take(8)?;
                self.push(Value::Float);
            }
            b'X' => {
                let len = u32::from_le_bytes(self.le_bytes()?);
                let value = self.text(len.into())?;
                self.push(value);
            }
            0x8c => {
                let len = self.byte()?;
                let value = self.text(len.into())?;
                self.push(value);
            }
            0x8d => {
                let len = u64::from_le_bytes(self.le_bytes()?);
                let value = self.text(len)?;
                self.push(value);
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Global(Rc::new((module, name))));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(module), Value::Str(name)) => self.push(Value::Global(Rc::new((
                        module.to_string(),
                        name.to_string(),
                    )))),
                    _ => return Err("STACK_GLOBAL without two strings".into()),
                }
            }
            b')' => self.push(Value::Tuple(node(Vec::new())?)),
            b']' => self.push(Value::List(node(Vec::new())?)),
            b'}' => self.push(Value::Dict(dict(Vec::new())?)),
            0x85..=0x87 => {
                let n = (opcode - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push(Value::Tuple(node(items)?));
            }
            b't' => {
                let items = self.pop_to_mark()?;
                self.push(Value::Tuple(node(items)?));
            }
            b'l' => {
                let items = self.pop_to_mark()?;
                self.push(Value::List(node(items)?));
            }
            b'd' => {
                let items = self.pop_to_mark()?;
                if items.len() % 2 != 0 {
                    return Err("DICT with an odd number of keys and values".into());
                }
                let mut pairs = Vec::with_capacity(items.len() / 2);
                let mut items = items.into_iter();
                while let (Some(key), Some(value)) = (items.next(), items.next()) {
                    pairs.push((key, value));
                }
                self.push(Value::Dict(dict(pairs)?));
            }
            b'a' => {
                let value = self.pop()?;
                self.append(vec![value])?;
            }
            b'e' => {
                let values = self.pop_to_mark()?;
                self.append(values)?;
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.set_items(vec![key, value])?;
            }
            b'u' => {
                let values = self.pop_to_mark()?;
                self.set_items(values)?;
            }
            b'q' => {
                let id = self.byte()?;
                self.memo_put(id.into())?;
            }
            b'r' => {
                let id = u32::from_le_bytes(self.le_bytes()?);
                self.memo_put(id)?;
            }
            0x94 => {
                let id = u32::try_from(self.memo.len()).map_err(|_| "too many memo entries")?;
                self.memo_put(id)?;
            }
            b'h' => {
                let id = self.byte()?;
                self.memo_get(id.into())?;
            }
            b'j' => {
                let id = u32::from_le_bytes(self.le_bytes()?);
                self.memo_get(id)?;
            }
            b'Q' => {
                let id = self.pop()?;
                self.push(Value::PersistentId(node(vec![id])?));
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let value = self.call(callable, args)?;
                self.push(value);
            }
            // BUILD sets an object's attributes (an OrderedDict's `_metadata`, for one); the
            // tensors do not depend on them, so the state is dropped.
            b'b' => {
                self.pop()?;
                self.top()?;
            }
            other => {
                return Err(format!(
                    "opcode 0x{other:02x} is outside the subset torch.save writes for a state_dict"
                ))
            }
        }
        Ok(None)
    }
}

/// The element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StorageType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    U8,
}

impl StorageType {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => StorageType::F64,
            "FloatStorage" => StorageType::F32,
            "HalfStorage" => StorageType::F16,
            "BFloat16Storage" => StorageType::BF16,
            "LongStorage" => StorageType::I64,
            "ByteStorage" => StorageType::U8,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            StorageType::F64 | StorageType::I64 => 8,
            StorageType::F32 => 4,
            StorageType::F16 | StorageType::BF16 => 2,
            StorageType::U8 => 1,
        }
    }

    /// candle's name for the type.
    pub(crate) fn dtype(self) -> candle_core::DType {
        use candle_core::DType;
        match self {
            StorageType::F64 => DType::F64,
            StorageType::F32 => DType::F32,
            StorageType::F16 => DType::F16,
            StorageType::BF16 => DType::BF16,
            StorageType::I64 => DType::I64,
            StorageType::U8 => DType::U8,
        }
    }

    /// Whether the type holds floating-point values.
    pub(crate) fn is_float(self) -> bool {
        !matches!(self, StorageType::I64 | StorageType::U8)
    }
}

/// One tensor of a `state_dict`, as declared by the pickle; nothing about it is checked against
/// the zip or the network yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorRecord {
    /// The `state_dict` key.
    pub name: String,
    /// The storage's record in the zip: `<archive>/data/<key>`.
    pub storage_key: String,
    /// The storage's element type.
    pub storage_type: StorageType,
    /// The storage's length in elements.
    pub storage_len: u64,
    /// The tensor's first element in the storage.
    pub offset: u64,
    /// The tensor's shape.
    pub shape: Vec<u64>,
    /// The tensor's strides, in elements.
    pub stride: Vec<u64>,
}

/// Finds the `state_dict` in a parsed checkpoint (under `model` or `state_dict`, as the port and
/// most training loops nest it, or at the top) and lists its tensors.
pub(crate) fn tensor_table(root: &Value) -> Result<Vec<TensorRecord>, String> {
    let Value::Dict(top) = root else {
        return Err(format!(
            "the pickle holds {}, not a dict of tensors",
            root.describe()
        ));
    };
    let nested = top
        .items
        .iter()
        .find_map(|(key, value)| match (key, value) {
            (Value::Str(key), Value::Dict(inner))
                if &**key == "model" || &**key == "state_dict" =>
            {
                Some(inner)
            }
            _ => None,
        });
    let state_dict = nested.unwrap_or(top);
    let mut records = Vec::with_capacity(state_dict.items.len());
    for (key, value) in &state_dict.items {
        let Value::Str(name) = key else {
            return Err(format!(
                "the state_dict has a key that is {}, not a string",
                key.describe()
            ));
        };
        let record = tensor_record(name, value, 0)
            .map_err(|message| format!("state_dict entry `{name}`: {message}"))?;
        records.push(record);
    }
    Ok(records)
}

fn call_parts(value: &Value) -> Option<(&(String, String), &[Value])> {
    let Value::Call(call) = value else {
        return None;
    };
    let [Value::Global(callable), Value::Tuple(args)] = call.items.as_slice() else {
        return None;
    };
    Some((callable, args.items.as_slice()))
}

fn tensor_record(name: &str, value: &Value, nesting: u32) -> Result<TensorRecord, String> {
    let (callable, args) =
        call_parts(value).ok_or_else(|| format!("is {}, not a tensor", value.describe()))?;
    match (callable.0.as_str(), callable.1.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2") => rebuild_tensor_v2(name, args),
        // A saved nn.Parameter wraps the tensor; a tensor subclass wraps the rebuild call.
        ("torch._utils", "_rebuild_parameter") if nesting == 0 => match args.first() {
            Some(inner) => tensor_record(name, inner, 1),
            None => Err("_rebuild_parameter without arguments".into()),
        },
        ("torch._tensor", "_rebuild_from_type_v2") if nesting == 0 => match args {
            [Value::Global(func), _, Value::Tuple(inner), ..]
                if func.0 == "torch._utils" && func.1 == "_rebuild_tensor_v2" =>
            {
                rebuild_tensor_v2(name, &inner.items)
            }
            _ => Err("_rebuild_from_type_v2 without a _rebuild_tensor_v2 call inside".into()),
        },
        (module, function) => Err(format!(
            "is built by {module}.{function}, not by torch's tensor rebuild functions"
        )),
    }
}

fn non_negative(value: &Value, what: &str) -> Result<u64, String> {
    match value {
        Value::Int(n) if *n >= 0 => Ok(*n as u64),
        Value::Int(n) => Err(format!("{what} is {n}, negative")),
        other => Err(format!("{what} is {}, not an int", other.describe())),
    }
}

fn int_tuple(value: &Value, what: &str) -> Result<Vec<u64>, String> {
    let Value::Tuple(items) = value else {
        return Err(format!("{what} is {}, not a tuple", value.describe()));
    };
    items
        .items
        .iter()
        .map(|item| non_negative(item, what))
        .collect()
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, ...)`.
fn rebuild_tensor_v2(name: &str, args: &[Value]) -> Result<TensorRecord, String> {
    let [storage, offset, shape, stride, ..] = args else {
        return Err(format!(
            "_rebuild_tensor_v2 with {} arguments; it takes storage, offset, size and stride",
            args.len()
        ));
    };
    let Value::PersistentId(id) = storage else {
        return Err(format!(
            "the storage is {}, not a persistent id",
            storage.describe()
        ));
    };
    let Some(Value::Tuple(id)) = id.items.first() else {
        return Err("the storage's persistent id is not a tuple".into());
    };
    // ('storage', storage_type, key, location, numel)
    let [Value::Str(kind), Value::Global(class), Value::Str(key), _, numel] = id.items.as_slice()
    else {
        return Err(
            "the storage's persistent id is not ('storage', type, key, location, numel)".into(),
        );
    };
    if &**kind != "storage" {
        return Err(format!("a persistent id of kind `{kind}`, not `storage`"));
    }
    let storage_type = StorageType::from_class(&class.1)
        .filter(|_| class.0 == "torch")
        .ok_or_else(|| format!("storage type {}.{} is not supported", class.0, class.1))?;
    let shape = int_tuple(shape, "size")?;
    let stride = int_tuple(stride, "stride")?;
    if shape.len() != stride.len() {
        return Err(format!(
            "size has {} dimensions but stride {}",
            shape.len(),
            stride.len()
        ));
    }
    Ok(TensorRecord {
        name: name.to_string(),
        storage_key: key.to_string(),
        storage_type,
        storage_len: non_negative(numel, "the storage length")?,
        offset: non_negative(offset, "the storage offset")?,
        shape,
        stride,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"w": _rebuild_tensor_v2(storage('0', FloatStorage, 6), 0, (2, 3), (3, 1))}` in protocol 2.
    fn small_state_dict(args_tuple: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'(', b'X', 1, 0, 0, 0, b'w'];
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n");
        p.extend_from_slice(args_tuple);
        p.extend_from_slice(b"Ru.");
        p
    }

    fn storage() -> Vec<u8> {
        let mut p = b"(X\x07\0\0\0storage".to_vec();
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        p.extend_from_slice(b"X\x01\0\0\x000X\x03\0\0\0cpuK\x06tQ");
        p
    }

    #[test]
    fn reads_a_rebuild_call() {
        let mut args = vec![b'('];
        args.extend(storage());
        args.extend_from_slice(b"K\x00K\x02K\x03\x86K\x03K\x01\x86\x89t");
        let table = tensor_table(&parse(&small_state_dict(&args)).unwrap()).unwrap();
        assert_eq!(
            table,
            vec![TensorRecord {
                name: "w".into(),
                storage_key: "0".into(),
                storage_type: StorageType::F32,
                storage_len: 6,
                offset: 0,
                shape: vec![2, 3],
                stride: vec![3, 1],
            }]
        );
    }

    #[test]
    fn a_one_element_rebuild_tuple_is_an_error_not_a_panic() {
        let mut args = storage();
        args.push(0x85);
        let message = tensor_table(&parse(&small_state_dict(&args)).unwrap()).unwrap_err();
        assert!(
            message.contains("_rebuild_tensor_v2 with 1 arguments"),
            "{message}"
        );
    }

    #[test]
    fn a_declared_string_length_beyond_the_input_is_refused_without_allocating() {
        let message = parse(b"\x80\x02X\xff\xff\xff\xff.").unwrap_err();
        assert!(message.contains("needs 4294967295 more bytes"), "{message}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut pickle = vec![b']'];
        pickle.extend(std::iter::repeat_n(0x85, 10_000));
        pickle.push(b'.');
        let message = parse(&pickle).unwrap_err();
        assert!(message.contains("nested more than 64 deep"), "{message}");
    }

    #[test]
    fn repeatedly_copying_a_memoised_list_hits_the_budget() {
        // A list of 60,000 items, then memoise-and-append over and over: each append copies it.
        let mut pickle = vec![b']', b'('];
        pickle.extend(std::iter::repeat_n(b'N', 60_000));
        pickle.push(b'e');
        for _ in 0..200 {
            pickle.extend_from_slice(b"q\x00Na");
        }
        pickle.push(b'.');
        let message = parse(&pickle).unwrap_err();
        assert!(message.contains("would be copied"), "{message}");
    }

    #[test]
    fn negative_long1_is_sign_extended() {
        let value = parse(b"\x8a\x01\xff.").unwrap();
        assert!(matches!(value, Value::Int(-1)), "{value:?}");
    }
}
