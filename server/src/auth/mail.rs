//! Outgoing mail: through SMTP (`lettre`) when configured, otherwise into the outbox table
//! that `GET /v1/admin/mail` lists (tests read tokens from it).
//!
//! Outbox mail is written in the same transaction as what caused it. SMTP mail is sent after
//! the commit, in the background; a failure is logged (the user can ask again).

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::SmtpConfig;
use crate::store::auth::{AuthTx, MailRow};

/// A message to send.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
}

/// Where mail goes.
pub enum Mailer {
    Outbox,
    Smtp {
        transport: Box<AsyncSmtpTransport<Tokio1Executor>>,
        from: Mailbox,
    },
}

impl Mailer {
    pub fn new(smtp: Option<&SmtpConfig>) -> anyhow::Result<Mailer> {
        let Some(smtp) = smtp else {
            return Ok(Mailer::Outbox);
        };
        let builder = match smtp.tls.as_str() {
            "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)?,
            "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)?,
            _ => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
        };
        let mut builder = builder.port(smtp.port);
        if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        let from: Mailbox = smtp
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("auth.smtp.from is not a mailbox: {e}"))?;
        Ok(Mailer::Smtp {
            transport: Box::new(builder.build()),
            from,
        })
    }

    /// Queues `mail` in the transaction (outbox) and returns what to send after the commit
    /// (SMTP).
    pub async fn queue(
        &self,
        tx: &mut dyn AuthTx,
        mail: Mail,
    ) -> crate::store::Result<Option<Mail>> {
        match self {
            Mailer::Outbox => {
                tx.insert_mail(&MailRow {
                    id: crate::util::id::new_id(),
                    to_addr: mail.to,
                    subject: mail.subject,
                    text: mail.text,
                    created_at: crate::util::time::now(),
                })
                .await?;
                Ok(None)
            }
            Mailer::Smtp { .. } => Ok(Some(mail)),
        }
    }

    /// Sends mail queued for SMTP, in the background.
    pub fn send_later(self: &std::sync::Arc<Self>, mail: Option<Mail>) {
        let Some(mail) = mail else { return };
        let mailer = self.clone();
        tokio::spawn(async move {
            if let Mailer::Smtp { transport, from } = &*mailer {
                let to = mail.to.clone();
                let message = match mail.to.parse::<Mailbox>().map(|to| {
                    Message::builder()
                        .from(from.clone())
                        .to(to)
                        .subject(mail.subject)
                        .body(mail.text)
                }) {
                    Ok(Ok(m)) => m,
                    _ => {
                        tracing::warn!("cannot build a mail message");
                        return;
                    }
                };
                if let Err(e) = transport.send(message).await {
                    tracing::warn!(error = %e, mail.to = %to, "sending mail failed");
                }
            }
        });
    }
}
