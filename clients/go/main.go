// Command chatplane-chat sends one message to chatplane's GatewayService.Chat over native gRPC
// and streams the answer to stdout, as text or (-json) as one JSON object per event.
//
// Exit codes (also in docs/clients.md):
//
//	0  the answer is complete (the stream ended with `done`)
//	1  any other failure (connection refused, INTERNAL, ...)
//	2  bad usage (missing -key or -message, unknown flag)
//	3  UNAUTHENTICATED or PERMISSION_DENIED: missing, wrong or revoked API key
//	4  INVALID_ARGUMENT or NOT_FOUND: the request was refused as it is; do not retry
//	5  RESOURCE_EXHAUSTED: rate limited; the message says when to retry
//	6  retryable: UNAVAILABLE, DEADLINE_EXCEEDED, or the stream ended without `done`;
//	   retry with the same -idempotency-key to get the stored answer
//	130 interrupted (Ctrl-C): the call is cancelled and the Gateway stops the generation
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	chatplanev1 "github.com/chatplane/chatplane/gen/go/chatplane/v1"
)

const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitAuth        = 3
	exitRefused     = 4
	exitRateLimited = 5
	exitRetryable   = 6
	exitInterrupted = 130
)

type options struct {
	addr           string
	key            string
	message        string
	conversationID string
	idempotencyKey string
	requestID      string
	json           bool
	tls            bool
	timeout        time.Duration
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	opts, code := parseFlags(args, stderr)
	if code >= 0 {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := chat(ctx, opts, stdout, stderr)
	if err == nil {
		return exitOK
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "chatplane-chat: interrupted; the answer was cancelled")
		return exitInterrupted
	}
	return report(err, opts, stderr)
}

func parseFlags(args []string, stderr io.Writer) (options, int) {
	var o options
	fs := flag.NewFlagSet("chatplane-chat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.addr, "addr", "localhost:50051", "Gateway (or Envoy) address, host:port")
	fs.StringVar(&o.key, "key", os.Getenv("CHATPLANE_API_KEY"), "API key (default $CHATPLANE_API_KEY)")
	fs.StringVar(&o.message, "message", "", "the message to send (required)")
	fs.StringVar(&o.conversationID, "conversation", "", "conversation id to continue; empty starts a new one")
	fs.StringVar(&o.idempotencyKey, "idempotency-key", "",
		"client_message_id: the same key twice yields one turn (default: a random one)")
	fs.StringVar(&o.requestID, "request-id", "", "x-request-id sent with the call (default: the Gateway makes one)")
	fs.BoolVar(&o.json, "json", false, "print every event as one JSON object per line, like the SSE data lines")
	fs.BoolVar(&o.tls, "tls", false, "use TLS with the system's roots (default: plaintext HTTP/2)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "deadline of the whole call")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: chatplane-chat -key KEY -message TEXT [-addr host:port] [-conversation ID] "+
			"[-idempotency-key K] [-json]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, exitOK
		}
		return o, exitUsage
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "chatplane-chat: unexpected argument %q\n", fs.Arg(0))
		return o, exitUsage
	case o.key == "":
		fmt.Fprintln(stderr, "chatplane-chat: -key (or $CHATPLANE_API_KEY) is required")
		return o, exitUsage
	case o.message == "":
		fmt.Fprintln(stderr, "chatplane-chat: -message is required")
		return o, exitUsage
	}
	if o.idempotencyKey == "" {
		o.idempotencyKey = randomKey()
	}
	return o, -1
}

func randomKey() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "go-" + hex.EncodeToString(b)
}

// jsonEvents writes events like the `data:` lines of the SSE endpoint (Envoy's transcoder):
// proto field names in lowerCamelCase, enums by name, zero values included.
var jsonEvents = protojson.MarshalOptions{EmitDefaultValues: true}

// errIncomplete: the stream ended cleanly but without `done`.
var errIncomplete = errors.New("the answer stream ended before `done`")

func chat(ctx context.Context, o options, stdout, stderr io.Writer) error {
	creds := insecure.NewCredentials()
	if o.tls {
		creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
	}
	conn, err := grpc.NewClient(o.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()

	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	md := metadata.Pairs("authorization", "Bearer "+o.key)
	if o.requestID != "" {
		md.Set("x-request-id", o.requestID)
	}
	ctx = metadata.NewOutgoingContext(ctx, md)

	stream, err := chatplanev1.NewGatewayServiceClient(conn).Chat(ctx, &chatplanev1.ChatRequest{
		ConversationId:  o.conversationID,
		Text:            o.message,
		ClientMessageId: o.idempotencyKey,
	})
	if err != nil {
		return err
	}
	var started *chatplanev1.TurnStarted
	for {
		event, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return errIncomplete
		}
		if err != nil {
			return err
		}
		if o.json {
			line, err := jsonEvents.Marshal(event)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s\n", line)
		}
		switch e := event.Event.(type) {
		case *chatplanev1.ChatResponse_Started:
			started = e.Started
		case *chatplanev1.ChatResponse_Delta:
			if !o.json {
				fmt.Fprint(stdout, e.Delta.GetText())
			}
		case *chatplanev1.ChatResponse_Done:
			if !o.json {
				fmt.Fprintln(stdout)
				// The ids on stderr, so stdout is only the answer: continue with -conversation.
				fmt.Fprintf(stderr, "conversation %s, assistant message %s\n",
					started.GetConversationId(), started.GetAssistantMessageId())
			}
			return nil
		}
	}
}

// report prints what went wrong and how to act on it; returns the exit code.
func report(err error, o options, stderr io.Writer) int {
	retry := fmt.Sprintf("retry with -idempotency-key %s to get the stored answer", o.idempotencyKey)
	if errors.Is(err, errIncomplete) {
		fmt.Fprintf(stderr, "chatplane-chat: %v; %s\n", err, retry)
		return exitRetryable
	}
	st, ok := status.FromError(err)
	if !ok {
		fmt.Fprintf(stderr, "chatplane-chat: %v\n", err)
		return exitFailure
	}
	// The canonical name (UNAUTHENTICATED), as in docs/api.md.
	fmt.Fprintf(stderr, "chatplane-chat: %s: %s\n", code.Code(st.Code()), st.Message())
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				fmt.Fprintf(stderr, "  field %s: %s\n", v.GetField(), v.GetDescription())
			}
		case *errdetails.RetryInfo:
			fmt.Fprintf(stderr, "  retry in %s\n", d.GetRetryDelay().AsDuration())
		case *errdetails.RequestInfo:
			fmt.Fprintf(stderr, "  request id %s\n", d.GetRequestId())
		}
	}
	switch st.Code() {
	case codes.Unauthenticated, codes.PermissionDenied:
		return exitAuth
	case codes.InvalidArgument, codes.NotFound:
		return exitRefused
	case codes.ResourceExhausted:
		return exitRateLimited
	case codes.Unavailable, codes.DeadlineExceeded:
		fmt.Fprintf(stderr, "  %s\n", retry)
		return exitRetryable
	default:
		return exitFailure
	}
}
