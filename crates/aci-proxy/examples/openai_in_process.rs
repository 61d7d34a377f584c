//! async-openai, end-to-end encrypted, with `aci-proxy` embedded in the same process: the proxy
//! serves on an ephemeral loopback port (`Proxy::spawn_local`) and stops with its handle.
//!
//! ```text
//! cargo run -p aci-proxy --example openai_in_process --features local-test-gateway
//! ```
//!
//! Offline, against the workspace's local test gateway (feature `local-test-gateway`). For a real gateway, fill
//! `.gateway("https://…").with_policy(your_policy)`.

use aci_proxy::{Proxy, ProxyConfig, ReceiptMode};
use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let config = ProxyConfig::default().local_test_gateway(true).receipts(ReceiptMode::BeforeRelease);
    let proxy = Proxy::start(config).await?; // attests the gateway, or fails saying which check failed
    let (base_url, server) = proxy.spawn_local().await?;

    let openai = Client::with_config(OpenAIConfig::new().with_api_base(&base_url).with_api_key("sk-demo"));
    let request = CreateChatCompletionRequestArgs::default()
        .model("demo-model")
        .messages([ChatCompletionRequestUserMessageArgs::default().content("Hello in process").build()?.into()])
        .build()?;
    match openai.chat().create(request).await {
        Ok(answer) => println!("answer: {:?}", answer.choices[0].message.content), // decrypted, receipt verified
        // A non-2xx answer (the gateway's, or the proxy's when a key or receipt check failed).
        Err(async_openai::error::OpenAIError::ApiError(e)) => eprintln!("refused: {e}"),
        Err(e) => return Err(e.into()),
    }
    println!("status: {}", proxy.status()["counts"]);
    server.shutdown().await;
    Ok(())
}
