// Command floor is the performance floor of any SDS server written with
// grpc-go: a gRPC server with grpc-go's default settings that answers
// SecretDiscoveryService's StreamSecrets (the first request of each
// stream) and FetchSecrets with one fixed response, marshalled before it
// starts. It reads no request beyond gRPC's framing and keeps no state.
// sdsbench runs it beside the agent and prints the agent's figures as
// ratios to it.
//
// Usage:
//
//	floor -socket PATH -response FILE
//
// FILE holds a marshalled envoy.service.discovery.v3.DiscoveryResponse.
// The floor serves until SIGTERM or SIGINT.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
)

// rawCodec sends the response's bytes as they are and reads nothing of
// requests: the floor has no proto work to do.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("floor: cannot send %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(*b)}, nil
}

func (rawCodec) Unmarshal(mem.BufferSlice, any) error { return nil }

func (rawCodec) Name() string { return "proto" }

func main() {
	socket := flag.String("socket", "", "Unix socket to listen on")
	respFile := flag.String("response", "", "file holding the marshalled DiscoveryResponse")
	flag.Parse()
	if err := run(*socket, *respFile); err != nil {
		fmt.Fprintf(os.Stderr, "floor: %v\n", err)
		os.Exit(1)
	}
}

func run(socket, respFile string) error {
	if socket == "" || respFile == "" {
		return errors.New("-socket and -response are required")
	}
	resp, err := os.ReadFile(respFile)
	if err != nil {
		return err
	}
	lis, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	gs := newServer(resp)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		gs.Stop()
	}()
	fmt.Println("floor listening")
	if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// newServer returns a gRPC server with grpc-go's defaults that answers
// with resp.
func newServer(resp []byte) *grpc.Server {
	gs := grpc.NewServer(grpc.ForceServerCodecV2(rawCodec{}))
	gs.RegisterService(&grpc.ServiceDesc{
		ServiceName: "envoy.service.secret.v3.SecretDiscoveryService",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "FetchSecrets",
			Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				var req []byte
				if err := dec(&req); err != nil {
					return nil, err
				}
				return &resp, nil
			},
		}},
		Streams: []grpc.StreamDesc{{
			StreamName:    "StreamSecrets",
			ServerStreams: true,
			ClientStreams: true,
			Handler: func(_ any, ss grpc.ServerStream) error {
				var req []byte
				if err := ss.RecvMsg(&req); err != nil {
					return err
				}
				if err := ss.SendMsg(&resp); err != nil {
					return err
				}
				// ACKs and later requests get no answer.
				for {
					if err := ss.RecvMsg(&req); err != nil {
						if errors.Is(err, io.EOF) {
							return nil
						}
						return err
					}
				}
			},
		}},
	}, struct{}{})
	return gs
}
