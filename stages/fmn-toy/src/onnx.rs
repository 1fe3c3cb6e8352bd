//! A minimal ONNX writer: the few protobuf messages of `onnx.proto` that a plain feed-forward
//! graph needs, written as hand-made `prost` structs (no `protoc` at build time), and a
//! [`GraphBuilder`] for the ops the toy segmenter uses (Conv, Relu, Sigmoid, Add, Concat,
//! Resize).
//!
//! Field numbers follow `onnx/onnx.proto` (IR version 8). Fields we never write are left out;
//! protobuf readers skip nothing they need, and [`ModelProto::decode`](prost::Message::decode)
//! reads our own files back (the tests round-trip through it).
use prost::Message;

/// The ONNX IR version written.
pub const IR_VERSION: i64 = 8;
/// The default-domain opset written.
pub const OPSET: i64 = 17;

/// `TensorProto.DataType.FLOAT`.
pub const FLOAT: i32 = 1;
/// `TensorProto.DataType.INT64`.
pub const INT64: i32 = 7;

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "4")]
    pub domain: String,
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(string, tag = "10")]
    pub doc_string: String,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(string, tag = "7")]
    pub domain: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "6")]
    pub doc_string: String,
}

/// `AttributeProto.AttributeType` values used here.
pub mod attribute_type {
    pub const FLOAT: i32 = 1;
    pub const INT: i32 = 2;
    pub const STRING: i32 = 3;
    pub const FLOATS: i32 = 6;
    pub const INTS: i32 = 7;
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(oneof = "type_proto::Value", tags = "1")]
    pub value: Option<type_proto::Value>,
}

pub mod type_proto {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(message, tag = "1")]
        TensorType(Tensor),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<super::TensorShapeProto>,
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

pub mod tensor_shape_proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
    }

    pub mod dimension {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(int64, tag = "1")]
            DimValue(i64),
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Fixed(i64),
    /// A symbolic (dynamic) dimension, e.g. the batch `"N"`.
    Named(String),
}

impl From<i64> for Dim {
    fn from(v: i64) -> Self {
        Dim::Fixed(v)
    }
}

impl From<&str> for Dim {
    fn from(v: &str) -> Self {
        Dim::Named(v.to_string())
    }
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value as D, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => D::DimValue(*v),
                Dim::Named(s) => D::DimParam(s.clone()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
    }
}

/// A node attribute.
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Floats(Vec<f32>),
    Str(String),
}

fn attribute(name: &str, value: &Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match value {
        Attr::Int(v) => {
            a.r#type = attribute_type::INT;
            a.i = *v;
        }
        Attr::Ints(v) => {
            a.r#type = attribute_type::INTS;
            a.ints = v.clone();
        }
        Attr::Float(v) => {
            a.r#type = attribute_type::FLOAT;
            a.f = *v;
        }
        Attr::Floats(v) => {
            a.r#type = attribute_type::FLOATS;
            a.floats = v.clone();
        }
        Attr::Str(v) => {
            a.r#type = attribute_type::STRING;
            a.s = v.as_bytes().to_vec();
        }
    }
    a
}

/// Builds a graph node by node; every method returns the name of the value it produced.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    counter: usize,
}

/// The settings of one 2-D convolution (square kernel, symmetric padding).
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub stride: i64,
    pub padding: i64,
    pub dilation: i64,
}

impl Default for ConvSpec {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            dilation: 1,
        }
    }
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        Self {
            graph: GraphProto {
                name: name.to_string(),
                ..Default::default()
            },
            counter: 0,
        }
    }

    fn fresh(&mut self, what: &str) -> String {
        self.counter += 1;
        format!("{what}_{}", self.counter)
    }

    /// Declares a float graph input.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, dims));
        name.to_string()
    }

    /// Declares `value` a float graph output.
    pub fn output(&mut self, value: &str, dims: &[Dim]) {
        self.graph.output.push(value_info(value, dims));
    }

    /// Adds a float constant.
    pub fn initializer(&mut self, name: &str, dims: &[i64], data: &[f32]) -> String {
        let expected: i64 = dims.iter().product();
        assert_eq!(
            expected as usize,
            data.len(),
            "initializer {name}: shape {dims:?} vs {} values",
            data.len()
        );
        let raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(TensorProto {
            dims: dims.to_vec(),
            data_type: FLOAT,
            name: name.to_string(),
            raw_data,
        });
        name.to_string()
    }

    /// Adds a node of `op` reading `inputs` and writing one fresh output, which it returns.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.node_into(op, inputs, &out, attrs);
        out
    }

    /// Adds a node of `op` writing the value named `output`.
    pub fn node_into(&mut self, op: &str, inputs: &[&str], output: &str, attrs: &[(&str, Attr)]) {
        let name = format!("{op}_{}", self.graph.node.len());
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name,
            op_type: op.to_string(),
            attribute: attrs.iter().map(|(n, v)| attribute(n, v)).collect(),
            ..Default::default()
        });
    }

    /// `Conv` with weight `[c_out, c_in, k, k]` (row-major values) and an optional bias, stored
    /// as initializers `NAME.weight` and `NAME.bias`.
    pub fn conv(
        &mut self,
        name: &str,
        x: &str,
        weight: (&[i64; 4], &[f32]),
        bias: Option<&[f32]>,
        spec: ConvSpec,
    ) -> String {
        let (dims, w) = weight;
        let base = name.to_string();
        let w_name = self.initializer(&format!("{base}.weight"), dims, w);
        let mut inputs = vec![x.to_string(), w_name];
        if let Some(b) = bias {
            inputs.push(self.initializer(&format!("{base}.bias"), &[dims[0]], b));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let p = spec.padding;
        self.node(
            "Conv",
            &refs,
            &[
                ("kernel_shape", Attr::Ints(vec![dims[2], dims[3]])),
                ("strides", Attr::Ints(vec![spec.stride, spec.stride])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
                ("dilations", Attr::Ints(vec![spec.dilation, spec.dilation])),
                ("group", Attr::Int(1)),
            ],
        )
    }

    pub fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], &[])
    }

    pub fn sigmoid(&mut self, x: &str) -> String {
        self.node("Sigmoid", &[x], &[])
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.node("Add", &[a, b], &[])
    }

    pub fn concat(&mut self, xs: &[&str], axis: i64) -> String {
        self.node("Concat", xs, &[("axis", Attr::Int(axis))])
    }

    /// Nearest-neighbour upsampling of an NCHW value by an integer `factor` (pixel (y, x) of
    /// the result copies pixel (y / factor, x / factor)).
    pub fn upsample_nearest(&mut self, x: &str, factor: u32) -> String {
        let base = self.fresh("resize");
        let f = factor as f32;
        let scales = self.initializer(&format!("{base}.scales"), &[4], &[1.0, 1.0, f, f]);
        self.node(
            "Resize",
            &[x, "", &scales],
            &[
                ("mode", Attr::Str("nearest".into())),
                (
                    "coordinate_transformation_mode",
                    Attr::Str("asymmetric".into()),
                ),
                ("nearest_mode", Attr::Str("floor".into())),
            ],
        )
    }

    /// The finished model.
    pub fn finish(self, doc: &str, metadata: &[(&str, &str)]) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "fmn-segment".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            domain: String::new(),
            model_version: 1,
            doc_string: doc.to_string(),
            graph: Some(self.graph),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        }
    }
}

/// The model's protobuf bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_prost() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", &["N".into(), 3.into(), 4.into(), 4.into()]);
        let c = g.conv(
            "c",
            &x,
            (&[1, 3, 1, 1], &[1.0, 0.0, 0.0]),
            Some(&[0.5]),
            ConvSpec::default(),
        );
        let y = g.sigmoid(&c);
        g.output(&y, &["N".into(), 1.into(), 4.into(), 4.into()]);
        let model = g.finish("doc", &[("k", "v")]);
        let bytes = encode(&model);
        let back = ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, model);
        let graph = back.graph.unwrap();
        assert_eq!(graph.node.len(), 2);
        assert_eq!(graph.node[0].op_type, "Conv");
        assert_eq!(graph.initializer[0].raw_data.len(), 12);
    }
}
