//! SASL as IoT Hub (and IoT Edge) does it for SAS devices: the mechanisms the SDKs use all succeed,
//! because SASL authenticates nobody here; the identity comes later from a CBS token.
//! Ref: amqp notes §1.2 (Node: no SASL; uAMQP: MSSBCBS; Java: ANONYMOUS; legacy: PLAIN).

use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::acceptor::SaslAcceptor;
use fe2o3_amqp_types::primitives::{Array, Symbol};
use fe2o3_amqp_types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};

const MECHANISMS: [&str; 3] = ["MSSBCBS", "ANONYMOUS", "PLAIN"];

#[derive(Clone, Debug, Default)]
pub struct IotHubSasl;

fn outcome(code: SaslCode) -> SaslServerFrame {
    SaslServerFrame::Outcome(SaslOutcome {
        code,
        additional_data: None,
    })
}

impl SaslAcceptor for IotHubSasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array(MECHANISMS.iter().map(|name| Symbol::from(*name)).collect())
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        if MECHANISMS.contains(&init.mechanism.as_str()) {
            tracing::debug!(mechanism = %init.mechanism.as_str(), "SASL mechanism accepted");
            outcome(SaslCode::Ok)
        } else {
            tracing::info!(mechanism = %init.mechanism.as_str(), "SASL mechanism refused");
            outcome(SaslCode::Auth)
        }
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        // None of the offered mechanisms sends a challenge, so a response is out of turn.
        outcome(SaslCode::Auth)
    }
}
