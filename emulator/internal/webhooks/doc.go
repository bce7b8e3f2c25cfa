// Package webhooks emulates how WHOOP and Oura deliver webhooks: each
// vendor's signature (WhoopSignature, OuraSignature), and a bounded pool of
// workers that posts signed bodies with a fresh timestamp on every attempt,
// retries non-2xx answers and timeouts on a schedule, holds and shuffles
// deliveries when reordering is injected, and reports an Oura 410 (which
// cancels the subscription) back to its Host; and Oura's subscription
// verification handshake (Handshake). Which events become which
// deliveries is decided by the caller under its state lock, so the random
// draws keep following the seed.
package webhooks
