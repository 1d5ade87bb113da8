//! What `candystore check` asks the broker, changing nothing: whether the
//! exchange and the queue exist, and whether a queue may be bound to the exchange
//! with the configured keys (tried on a temporary exclusive queue the broker
//! deletes with the connection). A passive declare that fails closes its channel,
//! so each question has a channel of its own.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

/// A connection to ask on.
pub struct Probe {
    connection: Connection,
}

/// A queue that exists: what waits in it and who consumes it.
#[derive(Debug, Clone, Copy)]
pub struct QueueState {
    pub messages: u32,
    pub consumers: u32,
}

impl Probe {
    pub async fn connect(url: &str) -> Result<Self, lapin::Error> {
        Ok(Self {
            connection: Connection::connect(url, ConnectionProperties::default()).await?,
        })
    }

    /// `Ok(false)` when the exchange does not exist.
    pub async fn exchange_exists(&self, exchange: &str) -> Result<bool, lapin::Error> {
        exchange_exists(&self.connection, exchange).await
    }

    /// `Ok(None)` when the queue does not exist.
    pub async fn queue(&self, queue: &str) -> Result<Option<QueueState>, lapin::Error> {
        let channel = self.connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| {
                Some(QueueState {
                    messages: q.message_count(),
                    consumers: q.consumer_count(),
                })
            });
        settle(channel, declared).await
    }

    /// Binds a temporary exclusive queue to `exchange` with each key: what
    /// `serve` does with its own queue, tried with this user's permissions.
    pub async fn bind(&self, exchange: &str, keys: &[String]) -> Result<(), lapin::Error> {
        let channel = self.connection.create_channel().await?;
        let probe = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        for key in keys {
            channel
                .queue_bind(
                    probe.name().clone(),
                    exchange.into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let _ = channel.close(200, "checked".into()).await;
        Ok(())
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "checked".into()).await;
    }
}

/// Whether `exchange` exists (`Ok(false)` when not): a passive declare, on a
/// channel of its own, since the broker closes the channel of one that fails.
/// The default exchange (`""`) always exists.
pub(crate) async fn exchange_exists(
    connection: &Connection,
    exchange: &str,
) -> Result<bool, lapin::Error> {
    if exchange.is_empty() {
        return Ok(true);
    }
    let channel = connection.create_channel().await?;
    let declared = channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    settle(channel, declared.map(|()| true)).await
}

/// A not-found answer as `Ok(default)`; the channel closed when it is still open.
async fn settle<T: Default>(
    channel: lapin::Channel,
    answer: Result<T, lapin::Error>,
) -> Result<T, lapin::Error> {
    match answer {
        Ok(v) => {
            let _ = channel.close(200, "checked".into()).await;
            Ok(v)
        }
        Err(e) if is_not_found(&e) => Ok(T::default()),
        Err(e) => Err(e),
    }
}

/// The broker's 404: what a passive declare of something missing gets.
pub(crate) fn is_not_found(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(
                amqp.kind(),
                lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND)
            )
    )
}
