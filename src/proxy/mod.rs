//! sluice-proxy: enforces Istio VirtualService/DestinationRule objects without Istio.
