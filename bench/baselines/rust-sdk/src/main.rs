//! Bench baseline (b): a Telemetry API -> Kinesis extension written the way
//! the official crates suggest. Registers (INVOKE, SHUTDOWN), subscribes to
//! platform/function/extension telemetry with the lambda-extension crate's
//! listener, and sends each received batch with PutRecords (chunks of 500)
//! before answering the POST. Exits on SHUTDOWN. No retries, no buffering.
use aws_sdk_kinesis::{primitives::Blob, types::PutRecordsRequestEntry, Client};
use lambda_extension::{
    service_fn, Error, Extension, LambdaEvent, LambdaTelemetry, LogBuffering, NextEvent,
    SharedService,
};

async fn events(event: LambdaEvent) -> Result<(), Error> {
    if let NextEvent::Shutdown(_) = event.next {
        std::process::exit(0);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let sdk = aws_config::load_from_env().await;
    let mut conf = aws_sdk_kinesis::config::Builder::from(&sdk);
    if let Ok(url) = std::env::var("AWS_ENDPOINT_URL_KINESIS") {
        conf = conf.endpoint_url(url);
    }
    let client = Client::from_conf(conf.build());
    let stream = std::env::var("KINESIS_TELEMETRY_STREAM").unwrap_or_default();
    let key = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "telemetry".into());
    let port: u16 = std::env::var("BASELINE_LISTENER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9003);

    let handler = service_fn(move |batch: Vec<LambdaTelemetry<serde_json::Value>>| {
        let (client, stream, key) = (client.clone(), stream.clone(), key.clone());
        async move {
            for chunk in batch.chunks(500) {
                let mut records = Vec::with_capacity(chunk.len());
                for ev in chunk {
                    records.push(
                        PutRecordsRequestEntry::builder()
                            .data(Blob::new(serde_json::to_vec(ev)?))
                            .partition_key(&key)
                            .build()?,
                    );
                }
                client
                    .put_records()
                    .stream_name(&stream)
                    .set_records(Some(records))
                    .send()
                    .await?;
            }
            Ok::<(), Error>(())
        }
    });

    Extension::new()
        .with_events(&["INVOKE", "SHUTDOWN"])
        .with_events_processor(service_fn(events))
        .with_telemetry_types(&["platform", "function", "extension"])
        .with_telemetry_buffering(LogBuffering {
            timeout_ms: 25,
            max_bytes: 262_144,
            max_items: 1000,
        })
        .with_telemetry_port_number(port)
        .with_telemetry_record_type::<serde_json::Value>()
        .with_telemetry_processor(SharedService::new(handler))
        .run()
        .await
}
