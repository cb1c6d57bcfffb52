// Command argo-lint-v4 runs Argo Workflows v4's own offline linter (what `argo lint --offline`
// runs) on the manifest files given as arguments.
//
// A separate module from ../v3: the two major versions pin different versions of shared
// dependencies (and v3 needs a replace v4 does not), so each gets its own go.mod and binary.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/argoproj/argo-workflows/v4/cmd/argo/lint"
	"github.com/argoproj/argo-workflows/v4/pkg/apiclient"
	wf "github.com/argoproj/argo-workflows/v4/pkg/apis/workflow"
	"github.com/argoproj/argo-workflows/v4/util/logging"
)

func main() {
	files := os.Args[1:]
	if len(files) == 0 {
		fmt.Fprintln(os.Stderr, "usage: argo-lint-v4 FILE... (YAML or JSON manifests)")
		os.Exit(2)
	}
	// v4 logs through a logger carried by the context, as the CLI's root command sets up.
	ctx := logging.WithLogger(context.Background(), logging.NewSlogLogger(logging.Info, logging.Text))
	// As runLint in cmd/argo/commands/lint.go with --offline: templates referenced by a
	// workflowTemplateRef are resolved from the files given, and the namespace defaults to "".
	ctx, client, err := apiclient.NewClientFromOptsWithContext(ctx, apiclient.Opts{
		Offline: true, OfflineFiles: files,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kinds := []string{wf.WorkflowPlural, wf.WorkflowTemplatePlural, wf.CronWorkflowPlural, wf.ClusterWorkflowTemplatePlural}
	// Strict as the CLI's default: a field unknown to this Argo version is an error. RunLint
	// exits 1 itself when any object fails.
	opts := lint.LintOptions{Files: files, Strict: true, DefaultNamespace: "", Printer: os.Stdout}
	if err := lint.RunLint(ctx, client, kinds, "simple", true, opts); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
