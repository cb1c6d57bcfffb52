// Command argo-lint-v3 runs Argo Workflows v3's own offline linter (what `argo lint --offline`
// runs) on the manifest files given as arguments.
//
// Argo's cmd/argo cannot be `go install`ed (a replace in its go.mod, UI assets it embeds are not
// in the module), so this imports the packages the command calls instead of reimplementing any
// check: a manifest passes here exactly when Argo's CLI would accept it.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/argoproj/argo-workflows/v3/cmd/argo/lint"
	"github.com/argoproj/argo-workflows/v3/pkg/apiclient"
	wf "github.com/argoproj/argo-workflows/v3/pkg/apis/workflow"
)

func main() {
	files := os.Args[1:]
	if len(files) == 0 {
		fmt.Fprintln(os.Stderr, "usage: argo-lint-v3 FILE... (YAML or JSON manifests; - for stdin is not supported)")
		os.Exit(2)
	}
	// As runLint in cmd/argo/commands/lint.go with --offline: templates referenced by a
	// workflowTemplateRef are resolved from the files given, and the namespace defaults to "".
	ctx, client, err := apiclient.NewClientFromOpts(apiclient.Opts{
		Offline: true, OfflineFiles: files, Context: context.Background(),
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
