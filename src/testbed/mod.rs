//! A real local fleet for tests and the demo: network namespaces with their own
//! sshd and dockerd, an image registry and bare Git repos.
