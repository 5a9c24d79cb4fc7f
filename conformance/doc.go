// Package conformance is the suite every courier transport passes, and the
// one users run against their own broker.
//
// An adapter's conformance test is a Harness plus one call:
//
//	func TestConformance(t *testing.T) {
//		conformance.Run(t, conformance.Harness{
//			Open: func(ctx context.Context) (transport.Conn, error) {
//				return transport.Open(ctx, "nats://127.0.0.1:4222")
//			},
//		})
//	}
//
// Each case is its own subtest whose doc comment says what it proves. A
// case that the transport's Capabilities rule out is skipped with the
// capability's name; volumes shrink under -short.
//
// To check a broker of your own, run the suite by URL:
//
//	go test ./conformance -run TestURL -args -url=nats://127.0.0.1:4222
//
// (blank-import the adapter in a test of your own to run it outside this
// repository). The package imports only the standard library and courier.
package conformance
