//! Built-in functions: IoT Hub's twin-query functions (`IS_DEFINED`, `STARTSWITH`, `ENDSWITH`,
//! `ARRAY_CONTAINS`) and, as a
//! superset, its message-routing functions. Names are case-insensitive; an unknown name or a wrong
//! number of arguments is a parse error, never a runtime surprise.

use crate::value::QValue;
use std::borrow::Cow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    IsDefined,
    IsNull,
    IsBool,
    IsNumber,
    IsString,
    IsObject,
    IsArray,
    IsPrimitive,
    ArrayContains,
    StartsWith,
    EndsWith,
    Contains,
    IndexOf,
    Lower,
    Upper,
    Length,
    Concat,
    Substring,
    Abs,
    Ceiling,
    Floor,
    Sign,
    Sqrt,
    Square,
    Exp,
    Power,
    AsNumber,
}

/// Name, function, least and most arguments.
const FUNCTIONS: &[(&str, Function, usize, usize)] = &[
    ("IS_DEFINED", Function::IsDefined, 1, 1),
    ("IS_NULL", Function::IsNull, 1, 1),
    ("IS_BOOL", Function::IsBool, 1, 1),
    ("IS_NUMBER", Function::IsNumber, 1, 1),
    ("IS_STRING", Function::IsString, 1, 1),
    ("IS_OBJECT", Function::IsObject, 1, 1),
    ("IS_ARRAY", Function::IsArray, 1, 1),
    ("IS_PRIMITIVE", Function::IsPrimitive, 1, 1),
    // How the Azure CLI lists an edge device's children: ARRAY_CONTAINS(parentScopes, '<scope>').
    ("ARRAY_CONTAINS", Function::ArrayContains, 2, 2),
    ("STARTSWITH", Function::StartsWith, 2, 2),
    ("STARTS_WITH", Function::StartsWith, 2, 2),
    ("ENDSWITH", Function::EndsWith, 2, 2),
    ("ENDS_WITH", Function::EndsWith, 2, 2),
    ("CONTAINS", Function::Contains, 2, 2),
    ("INDEX_OF", Function::IndexOf, 2, 2),
    ("LOWER", Function::Lower, 1, 1),
    ("UPPER", Function::Upper, 1, 1),
    ("LENGTH", Function::Length, 1, 1),
    ("CONCAT", Function::Concat, 2, 64),
    ("SUBSTRING", Function::Substring, 2, 3),
    ("ABS", Function::Abs, 1, 1),
    ("CEILING", Function::Ceiling, 1, 1),
    ("FLOOR", Function::Floor, 1, 1),
    ("SIGN", Function::Sign, 1, 1),
    ("SQRT", Function::Sqrt, 1, 1),
    ("SQUARE", Function::Square, 1, 1),
    ("EXP", Function::Exp, 1, 1),
    ("POWER", Function::Power, 2, 2),
    ("AS_NUMBER", Function::AsNumber, 1, 1),
];

impl Function {
    /// The function and its accepted argument counts.
    pub fn lookup(name: &str) -> Option<(Function, usize, usize)> {
        FUNCTIONS
            .iter()
            .find(|(known, ..)| known.eq_ignore_ascii_case(name))
            .map(|(_, function, least, most)| (*function, *least, *most))
    }

    pub fn call<'a>(self, args: Vec<QValue<'a>>) -> QValue<'a> {
        use Function::*;
        let mut args = args.into_iter();
        let first = args.next().unwrap_or(QValue::Undefined);
        let second = args.next().unwrap_or(QValue::Undefined);
        match self {
            IsDefined => QValue::Bool(first.is_defined()),
            IsNull => QValue::Bool(matches!(first, QValue::Null)),
            IsBool => QValue::Bool(matches!(first, QValue::Bool(_))),
            IsNumber => QValue::Bool(matches!(first, QValue::Number(_))),
            IsString => QValue::Bool(matches!(first, QValue::Str(_))),
            IsObject => QValue::Bool(matches!(first, QValue::Object(_))),
            IsArray => QValue::Bool(matches!(first, QValue::Array(_))),
            IsPrimitive => QValue::Bool(first.is_primitive()),
            ArrayContains => match &first {
                QValue::Array(items) => QValue::Bool(items.iter().any(|item| item.equals(&second) == Some(true))),
                _ => QValue::Undefined,
            },
            StartsWith => strings(&first, &second, |s, p| QValue::Bool(s.starts_with(p))),
            EndsWith => strings(&first, &second, |s, p| QValue::Bool(s.ends_with(p))),
            Contains => strings(&first, &second, |s, p| QValue::Bool(s.contains(p))),
            IndexOf => strings(&first, &second, |s, p| {
                QValue::Number(s.find(p).map_or(-1.0, |byte| s[..byte].chars().count() as f64))
            }),
            Lower => first
                .as_str()
                .map_or(QValue::Undefined, |s| QValue::Str(Cow::Owned(s.to_lowercase()))),
            Upper => first
                .as_str()
                .map_or(QValue::Undefined, |s| QValue::Str(Cow::Owned(s.to_uppercase()))),
            Length => first
                .as_str()
                .map_or(QValue::Undefined, |s| QValue::Number(s.chars().count() as f64)),
            Concat => {
                let mut text = String::new();
                for arg in [first, second].into_iter().chain(args) {
                    match arg.as_str() {
                        Some(s) => text.push_str(s),
                        None => return QValue::Undefined,
                    }
                }
                QValue::Str(Cow::Owned(text))
            }
            Substring => substring(&first, &second, &args.next().unwrap_or(QValue::Undefined)),
            Abs => number(&first, f64::abs),
            Ceiling => number(&first, f64::ceil),
            Floor => number(&first, f64::floor),
            Sign => number(&first, |n| if n == 0.0 { 0.0 } else { n.signum() }),
            Sqrt => number(&first, f64::sqrt),
            Square => number(&first, |n| n * n),
            Exp => number(&first, f64::exp),
            Power => match (first.as_number(), second.as_number()) {
                (Some(base), Some(exponent)) => finite(base.powf(exponent)),
                _ => QValue::Undefined,
            },
            AsNumber => match &first {
                QValue::Number(n) => QValue::Number(*n),
                QValue::Str(s) => s.trim().parse::<f64>().map_or(QValue::Undefined, finite),
                _ => QValue::Undefined,
            },
        }
    }
}

fn strings<'a>(a: &QValue, b: &QValue, f: impl Fn(&str, &str) -> QValue<'a>) -> QValue<'a> {
    match (a.as_str(), b.as_str()) {
        (Some(a), Some(b)) => f(a, b),
        _ => QValue::Undefined,
    }
}

fn number<'a>(a: &QValue, f: impl Fn(f64) -> f64) -> QValue<'a> {
    a.as_number().map_or(QValue::Undefined, |n| finite(f(n)))
}

/// NaN and infinities are not JSON: undefined instead.
fn finite<'a>(n: f64) -> QValue<'a> {
    if n.is_finite() {
        QValue::Number(n)
    } else {
        QValue::Undefined
    }
}

/// `SUBSTRING(s, start, length)`: zero-based, in characters; out-of-range parts are clipped.
fn substring<'a>(text: &QValue, start: &QValue, length: &QValue) -> QValue<'a> {
    let (Some(text), Some(start)) = (text.as_str(), start.as_number()) else {
        return QValue::Undefined;
    };
    let length = match length {
        QValue::Undefined => f64::INFINITY,
        other => match other.as_number() {
            Some(n) => n,
            None => return QValue::Undefined,
        },
    };
    let start = start.max(0.0) as usize;
    let length = if length.is_infinite() {
        usize::MAX
    } else {
        length.max(0.0) as usize
    };
    QValue::Str(Cow::Owned(text.chars().skip(start).take(length).collect()))
}
