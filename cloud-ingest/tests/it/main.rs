//! End-to-end over real sockets: the cloud, an edge agent linked to it over WebSocket, and
//! SDK devices on TCP.

mod auth;
mod link;
mod live;
mod streams;
mod support;
mod twins;
