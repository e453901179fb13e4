//! The test API server speaks list/watch the way kube-rs's real client expects.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{ListParams, WatchEvent, WatchParams},
};
use observer_tests::{
    apiserver::{ApiServer, Kind},
    init_tracing,
    objects::deployment_pod,
};

const STEP: Duration = Duration::from_secs(5);

#[tokio::test]
async fn lists_page_through_a_consistent_snapshot() -> anyhow::Result<()> {
    init_tracing();
    let server = ApiServer::start().await?;
    for (i, s) in ["a", "b", "c"].iter().enumerate() {
        server.apply(deployment_pod(
            "shop",
            "web",
            s,
            &format!("10.244.1.{}", i + 1),
        ))?;
    }
    let pods: Api<Pod> = Api::all(server.client()?);
    let page1 = pods.list(&ListParams::default().limit(2)).await?;
    assert_eq!(page1.items.len(), 2);
    assert_eq!(page1.metadata.resource_version.as_deref(), Some("4"));
    let token = page1.metadata.continue_.clone().expect("a continue token");
    // A change after the first page does not show in the rest of the list.
    server.delete(Kind::Pod, "shop", "web-6f7d8c9b5-c");
    let page2 = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await?;
    let names: Vec<String> = page1
        .items
        .iter()
        .chain(&page2.items)
        .map(kube::ResourceExt::name_any)
        .collect();
    assert_eq!(
        names,
        ["web-6f7d8c9b5-a", "web-6f7d8c9b5-b", "web-6f7d8c9b5-c"]
    );
    assert_eq!(page2.metadata.continue_, None);
    // A token is good for one use: a second use is 410 Gone, as for an expired token.
    let err = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect_err("a used continue token");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 410),
        "{err:?}"
    );
    // Namespaced paths work too.
    let in_ns: Api<Pod> = Api::namespaced(server.client()?, "shop");
    assert_eq!(in_ns.list(&ListParams::default()).await?.items.len(), 2);
    let other: Api<Pod> = Api::namespaced(server.client()?, "other");
    assert_eq!(other.list(&ListParams::default()).await?.items.len(), 0);
    Ok(())
}

#[tokio::test]
async fn watches_replay_history_stream_changes_and_expire() -> anyhow::Result<()> {
    init_tracing();
    let server = ApiServer::start().await?;
    server.apply(deployment_pod("shop", "web", "a", "10.244.1.1"))?;
    let from = server.resource_version().to_string();
    server.apply(deployment_pod("shop", "web", "b", "10.244.1.2"))?;
    let pods: Api<Pod> = Api::all(server.client()?);
    let mut stream = pods.watch(&WatchParams::default(), &from).await?.boxed();
    // Bookmarks come every second whatever else happens; `next` skips them.
    let next_any = async |s: &mut futures::stream::BoxStream<'_, kube::Result<WatchEvent<Pod>>>| {
        tokio::time::timeout(STEP, s.try_next())
            .await
            .expect("a watch event in time")
    };
    let next = async |s: &mut futures::stream::BoxStream<'_, kube::Result<WatchEvent<Pod>>>| loop {
        match next_any(s).await {
            Ok(Some(WatchEvent::Bookmark(_))) => {}
            other => return other,
        }
    };
    match next(&mut stream).await? {
        Some(WatchEvent::Added(p)) => assert_eq!(p.name_any(), "web-6f7d8c9b5-b"),
        other => panic!("{other:?}"),
    }
    server.delete(Kind::Pod, "shop", "web-6f7d8c9b5-a");
    match next(&mut stream).await? {
        Some(WatchEvent::Deleted(p)) => {
            assert_eq!(p.name_any(), "web-6f7d8c9b5-a");
            assert_eq!(p.resource_version().as_deref(), Some("4"));
        }
        other => panic!("{other:?}"),
    }
    match next_any(&mut stream).await? {
        Some(WatchEvent::Bookmark(b)) => assert_eq!(b.metadata.resource_version, "4"),
        other => panic!("{other:?}"),
    }
    server.expire_history();
    match next(&mut stream).await? {
        Some(WatchEvent::Error(s)) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("{other:?}"),
    }
    assert!(
        next(&mut stream).await?.is_none(),
        "the stream ends after 410"
    );
    // Resuming from before the expiry is refused the same way.
    let mut again = pods.watch(&WatchParams::default(), &from).await?.boxed();
    assert!(matches!(
        next(&mut again).await?,
        Some(WatchEvent::Error(s)) if s.code == 410
    ));
    Ok(())
}

#[tokio::test]
async fn a_restarted_server_keeps_its_objects_and_port() -> anyhow::Result<()> {
    init_tracing();
    let server = ApiServer::start().await?;
    server.apply(deployment_pod("shop", "web", "a", "10.244.1.1"))?;
    let pods: Api<Pod> = Api::all(server.client()?);
    assert_eq!(pods.list(&ListParams::default()).await?.items.len(), 1);
    server.stop().await;
    assert!(pods.list(&ListParams::default()).await.is_err());
    server.restart().await?;
    assert_eq!(pods.list(&ListParams::default()).await?.items.len(), 1);
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.starts_with("GET /api/v1/pods")),
        "{:?}",
        server.requests()
    );
    Ok(())
}
